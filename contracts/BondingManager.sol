// SPDX-License-Identifier: MIT
// Test stand-in for the Livepeer BondingManager: the reward path and fee
// accounting, with the deployed function signatures, tuple layouts, events,
// revert strings and check order. Each transcoder is its own only delegator, so
// rewards raise its stake and fees go to it in full. Pool membership and stake
// are set with the test controls at the end.
pragma solidity ^0.8.9;

import "./Manager.sol";

contract BondingManager is RoundsAwareManager {
    uint256 internal constant MAX_FUTURE_ROUND = type(uint256).max;
    uint256 internal constant PERC_DIVISOR = 1000000;
    uint256 internal constant PRECISE_PERC_DIVISOR = 10**27;

    enum TranscoderStatus {
        NotRegistered,
        Registered
    }

    struct Transcoder {
        uint256 lastRewardRound;
        uint256 rewardCut;
        uint256 feeShare;
        uint256 lastActiveStakeUpdateRound;
        uint256 activationRound;
        uint256 deactivationRound;
        uint256 activeCumulativeRewards;
        uint256 cumulativeRewards;
        uint256 cumulativeFees;
        uint256 lastFeeRound;
    }

    struct Delegator {
        uint256 bondedAmount;
        uint256 fees;
        address delegateAddress;
        uint256 delegatedAmount;
        uint256 startRound;
        uint256 lastClaimRound;
        uint256 nextUnbondingLockId;
    }

    mapping(address => Transcoder) internal transcoders;
    mapping(address => Delegator) internal delegators;
    // transcoder => round => total stake of its earnings pool for that round
    mapping(address => mapping(uint256 => uint256)) internal poolStake;
    // The sorted pool (active set of the next round), highest stake first.
    address[] internal pool;
    uint256 internal poolMaxSize;
    uint256 public currentRoundTotalActiveStake;
    uint256 public nextRoundTotalActiveStake;
    mapping(address => string) internal forcedRewardRevert;
    // Share of each reward sent to the treasury, in 1e27 precision.
    uint256 public treasuryRewardCutRate;
    address internal treasury;

    event TranscoderUpdate(address indexed transcoder, uint256 rewardCut, uint256 feeShare);
    event TranscoderActivated(address indexed transcoder, uint256 activationRound);
    event TranscoderDeactivated(address indexed transcoder, uint256 deactivationRound);
    event Reward(address indexed transcoder, uint256 amount);
    event TreasuryReward(address indexed transcoder, address treasury, uint256 amount);
    event WithdrawFees(address indexed delegator, address recipient, uint256 amount);
    event EarningsClaimed(
        address indexed delegate,
        address indexed delegator,
        uint256 rewards,
        uint256 fees,
        uint256 startRound,
        uint256 endRound
    );

    modifier onlyTicketBroker() {
        require(msg.sender == controller.getContract(TICKET_BROKER), "caller must be TicketBroker");
        _;
    }

    modifier onlyRoundsManager() {
        require(msg.sender == controller.getContract(ROUNDS_MANAGER), "caller must be RoundsManager");
        _;
    }

    modifier autoClaimEarnings(address _delegator) {
        _claimEarnings(_delegator);
        _;
    }

    constructor(address _controller, uint256 _poolMaxSize) RoundsAwareManager(_controller) {
        poolMaxSize = _poolMaxSize;
    }

    // ---- Real API: transactions -------------------------------------------

    function reward() external {
        rewardWithHint(address(0), address(0));
    }

    // The hints only steer the sorted-list insertion on chain; they are ignored here.
    function rewardWithHint(address _newPosPrev, address _newPosNext)
        public
        whenSystemNotPaused
        currentRoundInitialized
    {
        _newPosPrev;
        _newPosNext;
        uint256 currentRound = roundsManager().currentRound();
        require(isActiveTranscoder(msg.sender), "caller must be an active transcoder");
        Transcoder storage t = transcoders[msg.sender];
        require(t.lastRewardRound != currentRound, "caller has already called reward for the current round");
        string memory forced = forcedRewardRevert[msg.sender];
        require(bytes(forced).length == 0, forced);

        if (t.lastActiveStakeUpdateRound < currentRound) {
            poolStake[msg.sender][currentRound] = poolStake[msg.sender][t.lastActiveStakeUpdateRound];
        }
        uint256 rewardTokens = minter().createReward(poolStake[msg.sender][currentRound], currentRoundTotalActiveStake);
        if (treasuryRewardCutRate > 0) {
            uint256 treasuryRewards = (rewardTokens * treasuryRewardCutRate) / PRECISE_PERC_DIVISOR;
            rewardTokens -= treasuryRewards;
            emit TreasuryReward(msg.sender, treasury, treasuryRewards);
        }

        t.cumulativeRewards += rewardTokens;
        t.activeCumulativeRewards = t.cumulativeRewards;
        Delegator storage d = delegators[msg.sender];
        d.bondedAmount += rewardTokens;
        _setStake(msg.sender, d.delegatedAmount + rewardTokens, currentRound);
        t.lastRewardRound = currentRound;
        emit Reward(msg.sender, rewardTokens);
    }

    function updateTranscoderWithFees(address _transcoder, uint256 _fees, uint256 _round)
        external
        whenSystemNotPaused
        onlyTicketBroker
    {
        _round;
        require(isRegisteredTranscoder(_transcoder), "transcoder must be registered");
        Transcoder storage t = transcoders[_transcoder];
        t.cumulativeFees += _fees;
        t.lastFeeRound = roundsManager().currentRound();
        delegators[_transcoder].fees += _fees;
    }

    function withdrawFees(address payable _recipient, uint256 _amount)
        external
        whenSystemNotPaused
        currentRoundInitialized
        autoClaimEarnings(msg.sender)
    {
        require(_recipient != address(0), "invalid recipient");
        Delegator storage d = delegators[msg.sender];
        require(d.fees >= _amount, "insufficient fees to withdraw");
        d.fees -= _amount;
        minter().trustedWithdrawETH(_recipient, _amount);
        emit WithdrawFees(msg.sender, _recipient, _amount);
    }

    function claimEarnings(uint256 _endRound) external whenSystemNotPaused currentRoundInitialized {
        _endRound;
        _claimEarnings(msg.sender);
    }

    function setCurrentRoundTotalActiveStake() external onlyRoundsManager {
        currentRoundTotalActiveStake = nextRoundTotalActiveStake;
    }

    // ---- Real API: views ----------------------------------------------------

    function getTranscoder(address _transcoder)
        public
        view
        returns (
            uint256 lastRewardRound,
            uint256 rewardCut,
            uint256 feeShare,
            uint256 lastActiveStakeUpdateRound,
            uint256 activationRound,
            uint256 deactivationRound,
            uint256 activeCumulativeRewards,
            uint256 cumulativeRewards,
            uint256 cumulativeFees,
            uint256 lastFeeRound
        )
    {
        Transcoder storage t = transcoders[_transcoder];
        return (
            t.lastRewardRound,
            t.rewardCut,
            t.feeShare,
            t.lastActiveStakeUpdateRound,
            t.activationRound,
            t.deactivationRound,
            t.activeCumulativeRewards,
            t.cumulativeRewards,
            t.cumulativeFees,
            t.lastFeeRound
        );
    }

    function getDelegator(address _delegator)
        public
        view
        returns (
            uint256 bondedAmount,
            uint256 fees,
            address delegateAddress,
            uint256 delegatedAmount,
            uint256 startRound,
            uint256 lastClaimRound,
            uint256 nextUnbondingLockId
        )
    {
        Delegator storage d = delegators[_delegator];
        return (
            d.bondedAmount,
            d.fees,
            d.delegateAddress,
            d.delegatedAmount,
            d.startRound,
            d.lastClaimRound,
            d.nextUnbondingLockId
        );
    }

    function getTranscoderEarningsPoolForRound(address _transcoder, uint256 _round)
        public
        view
        returns (
            uint256 totalStake,
            uint256 transcoderRewardCut,
            uint256 transcoderFeeShare,
            uint256 cumulativeRewardFactor,
            uint256 cumulativeFeeFactor
        )
    {
        Transcoder storage t = transcoders[_transcoder];
        return (poolStake[_transcoder][_round], t.rewardCut, t.feeShare, 0, 0);
    }

    function isActiveTranscoder(address _transcoder) public view returns (bool) {
        Transcoder storage t = transcoders[_transcoder];
        uint256 currentRound = roundsManager().currentRound();
        return t.activationRound <= currentRound && currentRound < t.deactivationRound;
    }

    function isRegisteredTranscoder(address _transcoder) public view returns (bool) {
        Delegator storage d = delegators[_transcoder];
        return d.delegateAddress == _transcoder && d.bondedAmount > 0;
    }

    function transcoderStatus(address _transcoder) public view returns (TranscoderStatus) {
        return isRegisteredTranscoder(_transcoder) ? TranscoderStatus.Registered : TranscoderStatus.NotRegistered;
    }

    function transcoderTotalStake(address _transcoder) public view returns (uint256) {
        return delegators[_transcoder].delegatedAmount;
    }

    function pendingStake(address _delegator, uint256 _endRound) public view returns (uint256) {
        _endRound;
        return delegators[_delegator].bondedAmount;
    }

    function pendingFees(address _delegator, uint256 _endRound) public view returns (uint256) {
        _endRound;
        return delegators[_delegator].fees;
    }

    function getTotalBonded() public view returns (uint256) {
        return currentRoundTotalActiveStake;
    }

    function getTranscoderPoolSize() public view returns (uint256) {
        return pool.length;
    }

    function getTranscoderPoolMaxSize() public view returns (uint256) {
        return poolMaxSize;
    }

    function getFirstTranscoderInPool() public view returns (address) {
        return pool.length == 0 ? address(0) : pool[0];
    }

    function getNextTranscoderInPool(address _transcoder) public view returns (address) {
        for (uint256 i = 0; i + 1 < pool.length; i++) {
            if (pool[i] == _transcoder) {
                return pool[i + 1];
            }
        }
        return address(0);
    }

    // ---- Internals -------------------------------------------------------

    function _claimEarnings(address _delegator) internal {
        Delegator storage d = delegators[_delegator];
        uint256 currentRound = roundsManager().currentRound();
        uint256 startRound = d.lastClaimRound + 1;
        d.lastClaimRound = currentRound;
        emit EarningsClaimed(d.delegateAddress, _delegator, 0, 0, startRound, currentRound);
    }

    function _poolIndex(address _transcoder) internal view returns (bool, uint256) {
        for (uint256 i = 0; i < pool.length; i++) {
            if (pool[i] == _transcoder) {
                return (true, i);
            }
        }
        return (false, 0);
    }

    function _removeFromPool(address _transcoder) internal returns (bool) {
        (bool found, uint256 i) = _poolIndex(_transcoder);
        if (!found) {
            return false;
        }
        for (; i + 1 < pool.length; i++) {
            pool[i] = pool[i + 1];
        }
        pool.pop();
        nextRoundTotalActiveStake -= delegators[_transcoder].delegatedAmount;
        return true;
    }

    function _insertIntoPool(address _transcoder) internal {
        uint256 stake = delegators[_transcoder].delegatedAmount;
        pool.push(_transcoder);
        uint256 i = pool.length - 1;
        while (i > 0 && delegators[pool[i - 1]].delegatedAmount < stake) {
            pool[i] = pool[i - 1];
            i--;
        }
        pool[i] = _transcoder;
        nextRoundTotalActiveStake += stake;
    }

    // Changes the stake from the next round on, as stake changes do on chain.
    function _setStake(address _transcoder, uint256 _stake, uint256 _currentRound) internal {
        Transcoder storage t = transcoders[_transcoder];
        if (t.lastActiveStakeUpdateRound < _currentRound) {
            poolStake[_transcoder][_currentRound] = poolStake[_transcoder][t.lastActiveStakeUpdateRound];
        }
        bool inPool = _removeFromPool(_transcoder);
        delegators[_transcoder].delegatedAmount = _stake;
        if (inPool) {
            _insertIntoPool(_transcoder);
            poolStake[_transcoder][_currentRound + 1] = _stake;
            t.lastActiveStakeUpdateRound = _currentRound + 1;
        }
    }

    // ---- Test controls (not in the deployed ABI) -------------------------

    // Bonds `_stake` to `_transcoder` as a self-delegated, registered transcoder.
    // It is not in the active set until testActivateTranscoder.
    function testRegisterTranscoder(
        address _transcoder,
        uint256 _stake,
        uint256 _rewardCut,
        uint256 _feeShare
    ) external onlyControllerOwner {
        require(_stake > 0, "stake must be positive");
        require(_rewardCut <= PERC_DIVISOR && _feeShare <= PERC_DIVISOR, "invalid percentage");
        uint256 currentRound = roundsManager().currentRound();
        Delegator storage d = delegators[_transcoder];
        d.delegateAddress = _transcoder;
        d.bondedAmount = _stake;
        if (d.startRound == 0) {
            d.startRound = currentRound + 1;
            d.lastClaimRound = currentRound;
        }
        Transcoder storage t = transcoders[_transcoder];
        t.rewardCut = _rewardCut;
        t.feeShare = _feeShare;
        _setStake(_transcoder, _stake, currentRound);
        emit TranscoderUpdate(_transcoder, _rewardCut, _feeShare);
    }

    // Puts a registered transcoder into the pool, active from
    // currentRound + _roundsFromNow (1 is what joining the pool does on chain,
    // 0 makes it active at once).
    function testActivateTranscoder(address _transcoder, uint256 _roundsFromNow) external onlyControllerOwner {
        require(isRegisteredTranscoder(_transcoder), "transcoder must be registered");
        (bool found, ) = _poolIndex(_transcoder);
        require(!found, "transcoder is already in the pool");
        require(pool.length < poolMaxSize, "transcoder pool is full");
        uint256 currentRound = roundsManager().currentRound();
        uint256 activationRound = currentRound + _roundsFromNow;
        uint256 stake = delegators[_transcoder].delegatedAmount;
        _insertIntoPool(_transcoder);
        Transcoder storage t = transcoders[_transcoder];
        t.activationRound = activationRound;
        t.deactivationRound = MAX_FUTURE_ROUND;
        t.lastActiveStakeUpdateRound = activationRound;
        poolStake[_transcoder][activationRound] = stake;
        if (_roundsFromNow == 0) {
            currentRoundTotalActiveStake += stake;
        }
        emit TranscoderActivated(_transcoder, activationRound);
    }

    // Leaves the pool; still active for the rest of this round when
    // _immediately is false (as on chain), inactive at once otherwise.
    function testDeactivateTranscoder(address _transcoder, bool _immediately) external onlyControllerOwner {
        require(_removeFromPool(_transcoder), "transcoder is not in the pool");
        uint256 currentRound = roundsManager().currentRound();
        Transcoder storage t = transcoders[_transcoder];
        t.deactivationRound = _immediately ? currentRound : currentRound + 1;
        if (_immediately && t.activationRound <= currentRound) {
            uint256 last = t.lastActiveStakeUpdateRound;
            uint256 stake = last <= currentRound ? poolStake[_transcoder][last] : poolStake[_transcoder][currentRound];
            currentRoundTotalActiveStake -= stake < currentRoundTotalActiveStake ? stake : currentRoundTotalActiveStake;
        }
        emit TranscoderDeactivated(_transcoder, t.deactivationRound);
    }

    // Direct control of the active window: active when from <= round < to.
    function testSetActiveRounds(
        address _transcoder,
        uint256 _activationRound,
        uint256 _deactivationRound
    ) external onlyControllerOwner {
        Transcoder storage t = transcoders[_transcoder];
        t.activationRound = _activationRound;
        t.deactivationRound = _deactivationRound;
    }

    function testSetStake(address _transcoder, uint256 _stake) external onlyControllerOwner {
        require(isRegisteredTranscoder(_transcoder), "transcoder must be registered");
        delegators[_transcoder].bondedAmount = _stake;
        _setStake(_transcoder, _stake, roundsManager().currentRound());
    }

    // Sends `_rate` (1e27 = 100%) of every reward to `_treasury` from now on.
    function testSetTreasuryRewardCut(address _treasury, uint256 _rate) external onlyControllerOwner {
        require(_rate <= PRECISE_PERC_DIVISOR, "invalid percentage");
        treasury = _treasury;
        treasuryRewardCutRate = _rate;
    }

    function testSetLastRewardRound(address _transcoder, uint256 _round) external onlyControllerOwner {
        transcoders[_transcoder].lastRewardRound = _round;
    }

    // Makes every reward call from `_transcoder` revert with `_reason` after the
    // real checks pass; an empty reason turns it off.
    function testSetRewardRevert(address _transcoder, string calldata _reason) external onlyControllerOwner {
        forcedRewardRevert[_transcoder] = _reason;
    }
}
