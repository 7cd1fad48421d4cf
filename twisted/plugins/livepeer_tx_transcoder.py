from livepeer_tx.logs import LoggingServiceMaker

livepeerTranscoder = LoggingServiceMaker(
    "livepeer-tx transcoder",
    "livepeer_tx.transcoder.tap",
    "Livepeer transcoder: connects to an orchestrator and runs FFmpeg per segment",
    "livepeer-transcoder",
)
