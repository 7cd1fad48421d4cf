# -*- test-case-name: tests.test_chain_service -*-
"""
The orchestrator's on-chain command-line options (go-livepeer names).

Kept outside L{livepeer_tx.chain}: both taps name these options, and an
off-chain orchestrator or a transcoder imports no chain code.
"""

from twisted.python import usage

from livepeer_tx.secret import Secret, SecretFileError

OFFCHAIN = "offchain"
# Arbitrum One Controller (deployments/arbitrumMainnet), also go-livepeer's default.
ARBITRUM_ONE_CONTROLLER = "0xD8E8328501E9645d16Cf49539efC04f734606ee4"
NETWORKS = {"arbitrum-one-mainnet": ARBITRUM_ONE_CONTROLLER}

ETH_OPTION_NAMES = ("ethUrl", "ethKeystorePath", "ethPassword", "ethAcctAddr", "ethController")

CHAIN_OPT_PARAMETERS = [
    ["network", None, OFFCHAIN,
     "offchain, arbitrum-one-mainnet, or any other name with --ethController."],
    ["ethUrl", None, None, "Ethereum JSON-RPC URL (an Arbitrum One node for arbitrum-one-mainnet)."],
    ["ethController", None, None,
     "Protocol Controller address; every other contract is looked up through it."],
    ["ethKeystorePath", None, None, "Keystore directory or key file of the orchestrator account."],
    ["ethAcctAddr", None, None, "Account to use when the keystore holds several."],
    ["ethPassword", None, None,
     "File holding the keystore password (must not be readable by others); a literal works "
     "with a warning."],
    ["reward", None, "auto",
     "Call reward every round: on, off, or auto (on when the account is a registered transcoder). "
     "go-livepeer's -reward / -reward=true mean on, -reward=false off."],
    ["maxGasPrice", None, "0", "Highest maxFeePerGas in wei for our transactions (0: no cap)."],
    ["pricePerUnit", None, None, "Price in wei per --pixelsPerUnit pixels (required on-chain)."],
    ["pixelsPerUnit", None, "1", "Pixels per price unit."],
    ["ticketEV", None, "8000000000", "Expected value of one payment ticket, in wei."],
    ["maxFaceValue", None, "0", "Highest ticket face value in wei (0: no limit)."],
    ["blockPollingInterval", None, "5", "Seconds between chain polls (rounds, blocks, gas)."],
    ["rewardInterval", None, "15", "Seconds between reward checks."],
    ["initializeRoundGrace", None, "60",
     "Seconds a round may stay uninitialized before --initializeRound initializes it."],
    ["redeemGas", None, "1200000", "Gas a ticket redemption is assumed to cost."],
]

CHAIN_OPT_FLAGS = [
    ["initializeRound", None, "Initialize a round that nobody has initialized after the grace period."],
]

_INTEGERS = {
    "maxGasPrice": 0,
    "pricePerUnit": 0,
    "pixelsPerUnit": 1,
    "ticketEV": 1,
    "maxFaceValue": 0,
    "redeemGas": 1,
}
_SECONDS = ("blockPollingInterval", "rewardInterval", "initializeRoundGrace")


def isOnChain(config):
    """
    Whether the options select an on-chain network.
    """
    return (config.get("network") or OFFCHAIN) != OFFCHAIN


def validateChainOptions(config):
    """
    Check and normalise the on-chain options in place.

    Numbers become C{int}/C{float}, C{ethController} is filled in for known
    networks.

    @raise usage.UsageError: with a message naming the option.
    """
    if config.get("reward") not in ("on", "off", "auto"):
        raise usage.UsageError(f"--reward must be on, off or auto, not {config.get('reward')!r}")
    for name, lowest in _INTEGERS.items():
        value = config.get(name)
        if value is None:
            continue
        try:
            number = int(str(value), 0)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, not {value!r}") from None
        if number < lowest:
            raise usage.UsageError(f"--{name} must be at least {lowest}")
        config[name] = number
    for name in _SECONDS:
        try:
            config[name] = float(config.get(name))
        except (TypeError, ValueError):
            raise usage.UsageError(f"--{name} must be a number of seconds") from None
        if config[name] <= 0 and name != "initializeRoundGrace":
            raise usage.UsageError(f"--{name} must be positive")
    if not isOnChain(config):
        given = [f"--{name}" for name in ETH_OPTION_NAMES if config.get(name)]
        if given:
            raise usage.UsageError(
                f"{', '.join(given)} given but --network is offchain; choose a network"
            )
        return
    from eth_utils import is_address

    network = config["network"]
    if not config.get("ethUrl"):
        raise usage.UsageError(f"--network {network} needs --ethUrl")
    if not config.get("ethController"):
        if network not in NETWORKS:
            raise usage.UsageError(
                f"unknown --network {network}: give --ethController (known networks: "
                f"{', '.join(sorted(NETWORKS))})"
            )
        config["ethController"] = NETWORKS[network]
    if not is_address(config["ethController"]):
        raise usage.UsageError(f"--ethController {config['ethController']!r} is not an address")
    if config.get("ethAcctAddr") and not is_address(config["ethAcctAddr"]):
        raise usage.UsageError(f"--ethAcctAddr {config['ethAcctAddr']!r} is not an address")
    if not config.get("ethKeystorePath"):
        raise usage.UsageError(f"--network {network} needs --ethKeystorePath")
    if config.get("pricePerUnit") is None:
        raise usage.UsageError("--pricePerUnit must be set for an on-chain orchestrator")
    try:
        Secret.fromOption(config.get("ethPassword"), optionName="--ethPassword")
    except SecretFileError as e:
        raise usage.UsageError(f"--ethPassword: {e}") from None
