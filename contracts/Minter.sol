// SPDX-License-Identifier: MIT
// Test stand-in for the Livepeer Minter: the ETH escrow behind TicketBroker
// deposits, reserves and fees, and the per-round reward budget. Reward tokens are
// only accounted, no ERC20 is minted.
pragma solidity ^0.8.9;

import "./Manager.sol";

contract Minter is Manager {
    uint256 public inflation;
    uint256 public currentMintableTokens;
    uint256 public currentMintedTokens;
    uint256 public mintablePerRound;

    event SetCurrentRewardTokens(uint256 currentMintableTokens, uint256 currentInflation);

    modifier onlyRoundsManager() {
        require(msg.sender == controller.getContract(ROUNDS_MANAGER), "msg.sender not RoundsManager");
        _;
    }

    modifier onlyBondingManager() {
        require(msg.sender == controller.getContract(BONDING_MANAGER), "msg.sender not BondingManager");
        _;
    }

    modifier onlyBondingManagerOrJobsManager() {
        require(
            msg.sender == controller.getContract(BONDING_MANAGER) || msg.sender == controller.getContract(JOBS_MANAGER),
            "msg.sender not BondingManager or JobsManager"
        );
        _;
    }

    modifier onlyMinterOrJobsManager() {
        require(
            msg.sender == controller.getContract(MINTER) || msg.sender == controller.getContract(JOBS_MANAGER),
            "msg.sender not Minter or JobsManager"
        );
        _;
    }

    constructor(address _controller, uint256 _mintablePerRound, uint256 _inflation) Manager(_controller) {
        mintablePerRound = _mintablePerRound;
        inflation = _inflation;
    }

    // ---- Real API -------------------------------------------------------

    function createReward(uint256 _fracNum, uint256 _fracDenom)
        external
        onlyBondingManager
        whenSystemNotPaused
        returns (uint256)
    {
        uint256 mintAmount = _fracDenom == 0 ? 0 : (currentMintableTokens * _fracNum) / _fracDenom;
        currentMintedTokens += mintAmount;
        require(currentMintedTokens <= currentMintableTokens, "minted tokens cannot exceed mintable tokens");
        return mintAmount;
    }

    function trustedWithdrawETH(address payable _to, uint256 _amount)
        external
        onlyBondingManagerOrJobsManager
        whenSystemNotPaused
    {
        (bool ok, ) = _to.call{value: _amount}("");
        require(ok, "ETH transfer failed");
    }

    function depositETH() external payable onlyMinterOrJobsManager returns (bool) {
        return true;
    }

    function setCurrentRewardTokens() external onlyRoundsManager whenSystemNotPaused {
        currentMintableTokens = mintablePerRound;
        currentMintedTokens = 0;
        emit SetCurrentRewardTokens(currentMintableTokens, inflation);
    }

    // ---- Test controls (not in the deployed ABI) -------------------------

    // Takes effect at the next initializeRound.
    function testSetMintablePerRound(uint256 _amount) external onlyControllerOwner {
        mintablePerRound = _amount;
    }
}
