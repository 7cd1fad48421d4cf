from twisted.application.service import ServiceMaker

livepeerOrchestrator = ServiceMaker(
    "livepeer-tx orchestrator",
    "livepeer_tx.orchestrator.tap",
    "Livepeer orchestrator: routes gateway segments to remote transcoders",
    "livepeer-orchestrator",
)
