# -*- test-case-name: tests.test_push -*-
"""
The gateway side of livepeer-tx: what a go-livepeer broadcaster does to get a
segment transcoded by an orchestrator.

L{livepeer_tx.gateway.push} uploads segments to an orchestrator's C{/segment}
endpoint and fetches the renditions; L{livepeer_tx.gateway.segmenter} cuts a
video file into MPEG-TS segments with FFmpeg; L{livepeer_tx.gateway.demo} runs
the whole chain on one machine.
"""
