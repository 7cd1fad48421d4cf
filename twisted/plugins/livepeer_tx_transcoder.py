from twisted.application.service import ServiceMaker

livepeerTranscoder = ServiceMaker(
    "livepeer-tx transcoder",
    "livepeer_tx.transcoder.tap",
    "Livepeer transcoder: connects to an orchestrator and runs FFmpeg per segment",
    "livepeer-transcoder",
)
