// SPDX-License-Identifier: MIT
// Test stand-in for the Livepeer RoundsManager. Rounds are block arithmetic, as
// on chain: currentRound = lastRoundLengthUpdateRound
//   + (block.number - lastRoundLengthUpdateStartBlock) / roundLength.
pragma solidity ^0.8.9;

import "./Manager.sol";

contract RoundsManager is Manager {
    uint256 internal constant PERC_DIVISOR = 1000000;

    uint256 public roundLength;
    uint256 public roundLockAmount;
    uint256 public lastInitializedRound;
    uint256 public lastRoundLengthUpdateRound;
    uint256 public lastRoundLengthUpdateStartBlock;
    mapping(uint256 => bytes32) internal _blockHashForRound;
    mapping(uint256 => uint256) public lipUpgradeRound;

    event NewRound(uint256 indexed round, bytes32 blockHash);

    constructor(address _controller, uint256 _roundLength, uint256 _roundLockAmount) Manager(_controller) {
        require(_roundLength > 0, "round length cannot be 0");
        require(_roundLockAmount <= PERC_DIVISOR, "round lock amount must be a valid percentage");
        roundLength = _roundLength;
        roundLockAmount = _roundLockAmount;
    }

    // ---- Real API -------------------------------------------------------

    function setRoundLength(uint256 _roundLength) external onlyControllerOwner {
        require(_roundLength > 0, "round length cannot be 0");
        // Rebase first so that the round count stays continuous.
        lastRoundLengthUpdateRound = currentRound();
        lastRoundLengthUpdateStartBlock = currentRoundStartBlock();
        roundLength = _roundLength;
        emit ParameterUpdate("roundLength");
    }

    function setRoundLockAmount(uint256 _roundLockAmount) external onlyControllerOwner {
        require(_roundLockAmount <= PERC_DIVISOR, "round lock amount must be a valid percentage");
        roundLockAmount = _roundLockAmount;
        emit ParameterUpdate("roundLockAmount");
    }

    function initializeRound() external whenSystemNotPaused {
        uint256 currRound = currentRound();
        require(lastInitializedRound < currRound, "round already initialized");
        lastInitializedRound = currRound;
        bytes32 roundBlockHash = blockHash(blockNum() - 1);
        _blockHashForRound[currRound] = roundBlockHash;
        bondingManager().setCurrentRoundTotalActiveStake();
        minter().setCurrentRewardTokens();
        emit NewRound(currRound, roundBlockHash);
    }

    function blockNum() public view returns (uint256) {
        return block.number;
    }

    function blockHash(uint256 _block) public view returns (bytes32) {
        uint256 currentBlock = blockNum();
        require(_block < currentBlock, "can only retrieve past block hashes");
        require(currentBlock < 256 || _block >= currentBlock - 256, "can only retrieve hashes for last 256 blocks");
        return blockhash(_block);
    }

    function blockHashForRound(uint256 _round) public view returns (bytes32) {
        return _blockHashForRound[_round];
    }

    function currentRound() public view returns (uint256) {
        uint256 roundsSinceUpdate = (blockNum() - lastRoundLengthUpdateStartBlock) / roundLength;
        return lastRoundLengthUpdateRound + roundsSinceUpdate;
    }

    function currentRoundStartBlock() public view returns (uint256) {
        uint256 roundsSinceUpdate = currentRound() - lastRoundLengthUpdateRound;
        return lastRoundLengthUpdateStartBlock + roundsSinceUpdate * roundLength;
    }

    function currentRoundInitialized() public view returns (bool) {
        return lastInitializedRound == currentRound();
    }

    function currentRoundLocked() public view returns (bool) {
        uint256 lockedBlocks = (roundLength * roundLockAmount) / PERC_DIVISOR;
        return blockNum() - currentRoundStartBlock() >= roundLength - lockedBlocks;
    }

    // ---- Test controls (not in the deployed ABI) -------------------------

    // Simulates Arbitrum's zero block hash, or a wrong one, for a round.
    function testSetBlockHashForRound(uint256 _round, bytes32 _hash) external onlyControllerOwner {
        _blockHashForRound[_round] = _hash;
    }

    function testSetLastInitializedRound(uint256 _round) external onlyControllerOwner {
        lastInitializedRound = _round;
    }
}
