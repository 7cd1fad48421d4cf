from livepeer_tx.logs import LoggingServiceMaker

livepeerOrchestrator = LoggingServiceMaker(
    "livepeer-tx orchestrator",
    "livepeer_tx.orchestrator.tap",
    "Livepeer orchestrator: routes gateway segments to remote transcoders",
    "livepeer-orchestrator",
)
