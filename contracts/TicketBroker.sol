// SPDX-License-Identifier: MIT
// Test stand-in for the Livepeer TicketBroker (probabilistic micropayments):
// deposits and reserves, sender unlock/withdraw, and winning-ticket redemption
// with the deployed checks in the deployed order and with the deployed revert
// strings. ETH is held by the Minter; a redeemed ticket credits the recipient's
// fees through BondingManager.updateTranscoderWithFees.
pragma solidity ^0.8.9;

import "./Manager.sol";

contract TicketBroker is RoundsAwareManager {
    // secp256k1n / 2: signatures with a larger s are malleable and rejected.
    uint256 internal constant HALF_CURVE_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    struct Ticket {
        address recipient;
        address sender;
        uint256 faceValue;
        uint256 winProb;
        uint256 senderNonce;
        bytes32 recipientRandHash;
        bytes auxData;
    }

    struct Sender {
        uint256 deposit;
        uint256 withdrawRound;
    }

    struct ReserveInfo {
        uint256 fundsRemaining;
        uint256 claimedInCurrentRound;
    }

    struct Reserve {
        uint256 funds;
        mapping(uint256 => uint256) claimedForRound;
        mapping(uint256 => mapping(address => uint256)) claimedByAddress;
    }

    mapping(address => Sender) internal senders;
    mapping(address => Reserve) internal reserves;
    mapping(bytes32 => bool) public usedTickets;
    uint256 public unlockPeriod;
    uint256 public ticketValidityPeriod;

    event DepositFunded(address indexed sender, uint256 amount);
    event ReserveFunded(address indexed reserveHolder, uint256 amount);
    event ReserveClaimed(address indexed reserveHolder, address claimant, uint256 amount);
    event WinningTicketTransfer(address indexed sender, address indexed recipient, uint256 amount);
    event WinningTicketRedeemed(
        address indexed sender,
        address indexed recipient,
        uint256 faceValue,
        uint256 winProb,
        uint256 senderNonce,
        uint256 recipientRand,
        bytes auxData
    );
    event Unlock(address indexed sender, uint256 startRound, uint256 endRound);
    event UnlockCancelled(address indexed sender);
    event Withdrawal(address indexed sender, uint256 deposit, uint256 reserve);

    modifier checkDepositReserveETHValueSplit(uint256 _depositAmount, uint256 _reserveAmount) {
        require(
            msg.value == _depositAmount + _reserveAmount,
            "msg.value does not equal sum of deposit amount and reserve amount"
        );
        _;
    }

    modifier processDeposit(address _sender, uint256 _amount) {
        Sender storage sender = senders[_sender];
        sender.deposit += _amount;
        if (_isUnlockInProgress(sender)) {
            _cancelUnlock(sender, _sender);
        }
        _;
        emit DepositFunded(_sender, _amount);
    }

    modifier processReserve(address _sender, uint256 _amount) {
        Sender storage sender = senders[_sender];
        reserves[_sender].funds += _amount;
        if (_isUnlockInProgress(sender)) {
            _cancelUnlock(sender, _sender);
        }
        _;
        emit ReserveFunded(_sender, _amount);
    }

    constructor(
        address _controller,
        uint256 _unlockPeriod,
        uint256 _ticketValidityPeriod
    ) RoundsAwareManager(_controller) {
        require(_ticketValidityPeriod > 0, "ticketValidityPeriod must be greater than 0");
        unlockPeriod = _unlockPeriod;
        ticketValidityPeriod = _ticketValidityPeriod;
    }

    // ---- Parameters (owner) ------------------------------------------------

    function setUnlockPeriod(uint256 _unlockPeriod) external onlyControllerOwner {
        unlockPeriod = _unlockPeriod;
        emit ParameterUpdate("unlockPeriod");
    }

    function setTicketValidityPeriod(uint256 _ticketValidityPeriod) external onlyControllerOwner {
        require(_ticketValidityPeriod > 0, "ticketValidityPeriod must be greater than 0");
        ticketValidityPeriod = _ticketValidityPeriod;
        emit ParameterUpdate("ticketValidityPeriod");
    }

    // ---- Funding -------------------------------------------------------------

    function fundDeposit() external payable whenSystemNotPaused processDeposit(msg.sender, msg.value) {
        _processFunding(msg.value);
    }

    function fundReserve() external payable whenSystemNotPaused processReserve(msg.sender, msg.value) {
        _processFunding(msg.value);
    }

    function fundDepositAndReserve(uint256 _depositAmount, uint256 _reserveAmount) external payable {
        fundDepositAndReserveFor(msg.sender, _depositAmount, _reserveAmount);
    }

    function fundDepositAndReserveFor(
        address _addr,
        uint256 _depositAmount,
        uint256 _reserveAmount
    )
        public
        payable
        whenSystemNotPaused
        checkDepositReserveETHValueSplit(_depositAmount, _reserveAmount)
        processDeposit(_addr, _depositAmount)
        processReserve(_addr, _reserveAmount)
    {
        _processFunding(msg.value);
    }

    // ---- Redemption --------------------------------------------------------------

    function redeemWinningTicket(
        Ticket memory _ticket,
        bytes memory _sig,
        uint256 _recipientRand
    ) public whenSystemNotPaused currentRoundInitialized {
        bytes32 ticketHash = getTicketHash(_ticket);
        _requireValidWinningTicket(_ticket, ticketHash, _sig, _recipientRand);

        Sender storage sender = senders[_ticket.sender];
        require(_isLocked(sender), "sender is unlocked");
        require(sender.deposit > 0 || reserves[_ticket.sender].funds > 0, "sender deposit and reserve are zero");

        usedTickets[ticketHash] = true;

        uint256 amountToTransfer;
        if (_ticket.faceValue > sender.deposit) {
            amountToTransfer =
                sender.deposit +
                _claimFromReserve(_ticket.sender, _ticket.recipient, _ticket.faceValue - sender.deposit);
            sender.deposit = 0;
        } else {
            amountToTransfer = _ticket.faceValue;
            sender.deposit -= _ticket.faceValue;
        }

        if (amountToTransfer > 0) {
            (uint256 creationRound, ) = _creationRoundAndBlockHash(_ticket.auxData);
            bondingManager().updateTranscoderWithFees(_ticket.recipient, amountToTransfer, creationRound);
            emit WinningTicketTransfer(_ticket.sender, _ticket.recipient, amountToTransfer);
        }

        emit WinningTicketRedeemed(
            _ticket.sender,
            _ticket.recipient,
            _ticket.faceValue,
            _ticket.winProb,
            _ticket.senderNonce,
            _recipientRand,
            _ticket.auxData
        );
    }

    // Failed redemptions are skipped; look for WinningTicketRedeemed events.
    function batchRedeemWinningTickets(
        Ticket[] memory _tickets,
        bytes[] memory _sigs,
        uint256[] memory _recipientRands
    ) public whenSystemNotPaused currentRoundInitialized {
        for (uint256 i = 0; i < _tickets.length; i++) {
            (bool ok, ) = address(this).call(
                abi.encodeWithSelector(this.redeemWinningTicket.selector, _tickets[i], _sigs[i], _recipientRands[i])
            );
            ok;
        }
    }

    // ---- Sender exit -------------------------------------------------------------

    function unlock() public whenSystemNotPaused {
        Sender storage sender = senders[msg.sender];
        require(sender.deposit > 0 || reserves[msg.sender].funds > 0, "sender deposit and reserve are zero");
        require(!_isUnlockInProgress(sender), "unlock already initiated");
        uint256 currentRound = roundsManager().currentRound();
        sender.withdrawRound = currentRound + unlockPeriod;
        emit Unlock(msg.sender, currentRound, sender.withdrawRound);
    }

    function cancelUnlock() public whenSystemNotPaused {
        _cancelUnlock(senders[msg.sender], msg.sender);
    }

    function withdraw() public whenSystemNotPaused {
        Sender storage sender = senders[msg.sender];
        uint256 deposit = sender.deposit;
        uint256 reserve = reserves[msg.sender].funds;
        require(deposit > 0 || reserve > 0, "sender deposit and reserve are zero");
        require(_isUnlockInProgress(sender), "no unlock request in progress");
        require(!_isLocked(sender), "account is locked");
        sender.deposit = 0;
        reserves[msg.sender].funds = 0;
        minter().trustedWithdrawETH(payable(msg.sender), deposit + reserve);
        emit Withdrawal(msg.sender, deposit, reserve);
    }

    // ---- Views -------------------------------------------------------------------

    function getTicketHash(Ticket memory _ticket) public pure returns (bytes32) {
        return
            keccak256(
                abi.encodePacked(
                    _ticket.recipient,
                    _ticket.sender,
                    _ticket.faceValue,
                    _ticket.winProb,
                    _ticket.senderNonce,
                    _ticket.recipientRandHash,
                    _ticket.auxData
                )
            );
    }

    function isUnlockInProgress(address _sender) public view returns (bool) {
        return _isUnlockInProgress(senders[_sender]);
    }

    function getSenderInfo(address _sender) public view returns (Sender memory sender, ReserveInfo memory reserve) {
        sender = senders[_sender];
        reserve = getReserveInfo(_sender);
    }

    function getReserveInfo(address _reserveHolder) public view returns (ReserveInfo memory info) {
        Reserve storage reserve = reserves[_reserveHolder];
        info.fundsRemaining = reserve.funds;
        info.claimedInCurrentRound = reserve.claimedForRound[roundsManager().currentRound()];
    }

    function claimableReserve(address _reserveHolder, address _claimant) public view returns (uint256) {
        Reserve storage reserve = reserves[_reserveHolder];
        uint256 currentRound = roundsManager().currentRound();
        if (!bondingManager().isActiveTranscoder(_claimant)) {
            return 0;
        }
        uint256 poolSize = bondingManager().getTranscoderPoolSize();
        if (poolSize == 0) {
            return 0;
        }
        uint256 totalClaimable = reserve.funds + reserve.claimedForRound[currentRound];
        uint256 share = totalClaimable / poolSize;
        uint256 claimed = reserve.claimedByAddress[currentRound][_claimant];
        return share > claimed ? share - claimed : 0;
    }

    function claimedReserve(address _reserveHolder, address _claimant) public view returns (uint256) {
        return reserves[_reserveHolder].claimedByAddress[roundsManager().currentRound()][_claimant];
    }

    // ---- Internals -----------------------------------------------------------

    function _processFunding(uint256 _amount) internal {
        minter().depositETH{value: _amount}();
    }

    function _isUnlockInProgress(Sender storage _sender) internal view returns (bool) {
        return _sender.withdrawRound > 0;
    }

    function _isLocked(Sender storage _sender) internal view returns (bool) {
        return _sender.withdrawRound == 0 || roundsManager().currentRound() < _sender.withdrawRound;
    }

    function _cancelUnlock(Sender storage _sender, address _senderAddress) internal {
        require(_isUnlockInProgress(_sender), "no unlock request in progress");
        _sender.withdrawRound = 0;
        emit UnlockCancelled(_senderAddress);
    }

    function _claimFromReserve(
        address _reserveHolder,
        address _claimant,
        uint256 _amount
    ) internal returns (uint256) {
        uint256 claimableFunds = claimableReserve(_reserveHolder, _claimant);
        if (claimableFunds == 0) {
            return 0;
        }
        uint256 currentRound = roundsManager().currentRound();
        Reserve storage reserve = reserves[_reserveHolder];
        uint256 claimAmount = _amount > claimableFunds ? claimableFunds : _amount;
        reserve.claimedForRound[currentRound] += claimAmount;
        reserve.claimedByAddress[currentRound][_claimant] += claimAmount;
        reserve.funds -= claimAmount;
        emit ReserveClaimed(_reserveHolder, _claimant, claimAmount);
        return claimAmount;
    }

    function _requireValidWinningTicket(
        Ticket memory _ticket,
        bytes32 _ticketHash,
        bytes memory _sig,
        uint256 _recipientRand
    ) internal view {
        require(_ticket.recipient != address(0), "ticket recipient is null address");
        require(_ticket.sender != address(0), "ticket sender is null address");
        _requireValidTicketAuxData(_ticket.auxData);
        require(
            keccak256(abi.encodePacked(_recipientRand)) == _ticket.recipientRandHash,
            "recipientRand does not match recipientRandHash"
        );
        require(!usedTickets[_ticketHash], "ticket is used");
        require(_isValidTicketSig(_ticket.sender, _sig, _ticketHash), "invalid signature over ticket hash");
        require(uint256(keccak256(abi.encodePacked(_sig, _recipientRand))) < _ticket.winProb, "ticket did not win");
    }

    function _requireValidTicketAuxData(bytes memory _auxData) internal view {
        (uint256 creationRound, bytes32 creationRoundBlockHash) = _creationRoundAndBlockHash(_auxData);
        bytes32 blockHash = roundsManager().blockHashForRound(creationRound);
        require(blockHash != bytes32(0), "ticket creationRound does not have a block hash");
        require(creationRoundBlockHash == blockHash, "ticket creationRoundBlockHash invalid for creationRound");
        uint256 currRound = roundsManager().currentRound();
        require(creationRound + ticketValidityPeriod > currRound, "ticket is expired");
    }

    function _creationRoundAndBlockHash(bytes memory _auxData)
        internal
        pure
        returns (uint256 creationRound, bytes32 creationRoundBlockHash)
    {
        require(_auxData.length == 64, "invalid length for ticket auxData: must be 64 bytes");
        assembly {
            creationRound := mload(add(_auxData, 32))
            creationRoundBlockHash := mload(add(_auxData, 64))
        }
    }

    // EIP-191 personal-message signature over the ticket hash, with the checks
    // (and messages) of OpenZeppelin 4.4 ECDSA.recover.
    function _isValidTicketSig(
        address _sender,
        bytes memory _sig,
        bytes32 _msgHash
    ) internal pure returns (bool) {
        require(_sig.length == 65, "INVALID_SIGNATURE_LENGTH");
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly {
            r := mload(add(_sig, 32))
            s := mload(add(_sig, 64))
            v := byte(0, mload(add(_sig, 96)))
        }
        require(uint256(s) <= HALF_CURVE_ORDER, "ECDSA: invalid signature 's' value");
        require(v == 27 || v == 28, "ECDSA: invalid signature 'v' value");
        bytes32 digest = keccak256(abi.encodePacked("\x19Ethereum Signed Message:\n32", _msgHash));
        address signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "ECDSA: invalid signature");
        return _sender == signer;
    }
}
