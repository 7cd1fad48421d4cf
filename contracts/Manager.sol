// SPDX-License-Identifier: MIT
// Shared base of the manager stand-ins and the interfaces they use to reach
// each other. Contracts are looked up through the Controller at call time, as
// in the deployed protocol, so a stand-in can be replaced by re-registering it.
pragma solidity ^0.8.9;

interface IController {
    function paused() external view returns (bool);
    function owner() external view returns (address);
    function getContract(bytes32 _id) external view returns (address);
}

interface IRoundsManager {
    function currentRound() external view returns (uint256);
    function currentRoundInitialized() external view returns (bool);
    function blockHashForRound(uint256 _round) external view returns (bytes32);
}

interface IBondingManager {
    function setCurrentRoundTotalActiveStake() external;
    function updateTranscoderWithFees(address _transcoder, uint256 _fees, uint256 _round) external;
    function isActiveTranscoder(address _transcoder) external view returns (bool);
    function getTranscoderPoolSize() external view returns (uint256);
}

interface IMinter {
    function setCurrentRewardTokens() external;
    function createReward(uint256 _fracNum, uint256 _fracDenom) external returns (uint256);
    function depositETH() external payable returns (bool);
    function trustedWithdrawETH(address payable _to, uint256 _amount) external;
}

abstract contract Manager {
    bytes32 internal constant BONDING_MANAGER = keccak256("BondingManager");
    bytes32 internal constant ROUNDS_MANAGER = keccak256("RoundsManager");
    bytes32 internal constant TICKET_BROKER = keccak256("TicketBroker");
    bytes32 internal constant JOBS_MANAGER = keccak256("JobsManager");
    bytes32 internal constant MINTER = keccak256("Minter");

    IController public controller;

    event SetController(address controller);
    event ParameterUpdate(string param);

    modifier onlyController() {
        require(msg.sender == address(controller), "caller must be Controller");
        _;
    }

    modifier onlyControllerOwner() {
        require(msg.sender == controller.owner(), "caller must be Controller owner");
        _;
    }

    modifier whenSystemNotPaused() {
        require(!controller.paused(), "system is paused");
        _;
    }

    modifier whenSystemPaused() {
        require(controller.paused(), "system is not paused");
        _;
    }

    constructor(address _controller) {
        controller = IController(_controller);
    }

    function setController(address _controller) external onlyController {
        controller = IController(_controller);
        emit SetController(_controller);
    }

    function roundsManager() internal view returns (IRoundsManager) {
        return IRoundsManager(controller.getContract(ROUNDS_MANAGER));
    }

    function bondingManager() internal view returns (IBondingManager) {
        return IBondingManager(controller.getContract(BONDING_MANAGER));
    }

    function minter() internal view returns (IMinter) {
        return IMinter(controller.getContract(MINTER));
    }
}

// Base of the managers that act only in an initialized round.
abstract contract RoundsAwareManager is Manager {
    modifier currentRoundInitialized() {
        require(roundsManager().currentRoundInitialized(), "current round is not initialized");
        _;
    }

    constructor(address _controller) Manager(_controller) {}
}
