# -*- test-case-name: tests.test_push -*-
"""
The C{livepeer-tx} command: a gateway tool that pushes a video file to an
orchestrator (C{push}), and a self-contained demo (C{demo}).
"""

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from livepeer_tx import __version__
from livepeer_tx.profiles import MAX_SIDE, ProfileError, parsePresetList

DEFAULT_PROFILES = "P240p30fps16x9,P360p30fps16x9"
# The demo's generated clip: its default length and size, and its smallest side
# (libx264's yuv420p needs even sides).
DEMO_CLIP_SECONDS = 6
MAX_CLIP_SECONDS = 600
DEMO_CLIP_SIZE = (1280, 720)
MIN_CLIP_SIDE = 16

PUSH_DESCRIPTION = """\
Cut INPUT into MPEG-TS segments and push them to an orchestrator's public port
the way a go-livepeer gateway does (GetOrchestrator over gRPC for a session,
then POST /segment with a Livepeer-Segment header carrying its auth token),
then download every rendition. An orchestrator without gRPC gets segments
without a token. Prints one line per segment and a summary; exits 1 if any
segment failed.

The orchestrator's certificate is verified: trust its self-signed certificate
with --orchCert (the cert.pem in its data directory) or pin it with
--orchCertFingerprint (the SHA-256 fingerprint it logs at start-up).
"""

PUSH_EPILOG = """\
examples:
  livepeer-tx push --orchAddr 127.0.0.1:8935 --orchCert ~/.lpData/offchain/cert.pem clip.mp4
  livepeer-tx push --orchAddr o.example.com:8935 \\
      --orchCertFingerprint 3A:1F:...:9C --profiles P720p30fps16x9 --out renditions clip.mp4
  livepeer-tx push --orchAddr 127.0.0.1:8935 --insecure --json clip.ts > result.json
"""

DEMO_DESCRIPTION = f"""\
Run the whole chain on this machine: generate a test clip with audio
({DEMO_CLIP_SECONDS} s of {DEMO_CLIP_SIZE[0]}x{DEMO_CLIP_SIZE[1]} unless --clipSeconds and --clipSize say otherwise), start an
orchestrator and one transcoder on free ports of 127.0.0.1, push the clip in
2 s segments (3 for the default clip) for the P240p30fps16x9, P360p30fps16x9
and P720p30fps16x9 renditions, write them under --out and stop both nodes.
Exits 0 when every segment was transcoded, 1 otherwise.
"""


def _positive(convert, what):
    """
    An argparse type: C{convert} of the text, refused unless it works and
    is above zero (C{what} names the kind of number in the message).
    """

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than zero: {text}")
        return value

    return parse


_positiveInt = _positive(int, "a whole number")
_positiveFloat = _positive(float, "a number")


def _clipSeconds(text):
    value = _positiveInt(text)
    if value > MAX_CLIP_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_CLIP_SECONDS} seconds: {text}")
    return value


def _clipSize(text):
    match = re.fullmatch(r"([0-9]+)[xX]([0-9]+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT: {text!r}")
    size = int(match.group(1)), int(match.group(2))
    if not all(MIN_CLIP_SIDE <= side <= MAX_SIDE and side % 2 == 0 for side in size):
        raise argparse.ArgumentTypeError(
            f"width and height must be even numbers from {MIN_CLIP_SIDE} to {MAX_SIDE}: {text}"
        )
    return size


def _profiles(text):
    try:
        profiles = parsePresetList(text)
    except ProfileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not profiles:
        raise argparse.ArgumentTypeError("at least one profile is required")
    return profiles


def buildParser():
    """
    The argument parser of C{livepeer-tx}.
    """
    parser = argparse.ArgumentParser(
        prog="livepeer-tx",
        description="Gateway-side tools for livepeer-tx, a Livepeer orchestrator/transcoder on Twisted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    push = commands.add_parser(
        "push",
        help="push a video file to an orchestrator and fetch the renditions",
        description=PUSH_DESCRIPTION,
        epilog=PUSH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("input", metavar="INPUT", help="video file to segment and push")
    push.add_argument(
        "--orchAddr", required=True, metavar="HOST:PORT",
        help="orchestrator public address (default port 8935; http:// for cleartext)",
    )
    trust = push.add_mutually_exclusive_group()
    trust.add_argument(
        "--orchCert", metavar="FILE",
        help="PEM certificate (or CA) to trust for the orchestrator",
    )
    trust.add_argument(
        "--orchCertFingerprint", metavar="SHA256",
        help="accept only the certificate with this SHA-256 fingerprint (hex, colons optional)",
    )
    trust.add_argument(
        "--insecure", action="store_true",
        help="accept any certificate (go-livepeer's behaviour; test setups only)",
    )
    push.add_argument(
        "--profiles", type=_profiles, default=DEFAULT_PROFILES, metavar="NAMES",
        help=f"comma-separated rendition presets (default: {DEFAULT_PROFILES})",
    )
    push.add_argument(
        "--segmentDuration", type=_positiveFloat, default=2.0, metavar="SECONDS",
        help="target segment length in seconds (default: 2)",
    )
    push.add_argument(
        "--reencode", choices=["auto", "always", "never"], default="auto",
        help="re-encode the input before cutting: 'auto' when stream copy cannot cut "
        "at --segmentDuration (default: auto)",
    )
    push.add_argument(
        "--manifestId", default=None, metavar="ID",
        help="stream manifest id (default: random)",
    )
    push.add_argument(
        "--concurrency", type=_positiveInt, default=1, metavar="N",
        help="segments in flight at once (default: 1, as a live gateway)",
    )
    push.add_argument(
        "--timeout", type=_positiveFloat, default=None, metavar="SECONDS",
        help="deadline per segment (default: go-livepeer's max(8 s, 4 x duration))",
    )
    push.add_argument(
        "--out", metavar="DIR", help="write renditions as DIR/<profile>/<seq>.ts",
    )
    push.add_argument(
        "--json", action="store_true",
        help="print one JSON document with every result and the summary instead of text",
    )
    push.add_argument("--verbose", action="store_true", help="log to stderr")

    demo = commands.add_parser(
        "demo",
        help="run an orchestrator and a transcoder locally and push a test clip",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out", default="demo-output", metavar="DIR",
        help="where renditions are written as DIR/<profile>/<seq>.ts (default: ./demo-output)",
    )
    demo.add_argument(
        "--workDir", default=None, metavar="DIR",
        help="keep node data and logs in DIR (default: a temporary directory, removed on success)",
    )
    demo.add_argument(
        "--maxSessions", type=_positiveInt, default=1, metavar="N",
        help="capacity of the transcoder (default: 1)",
    )
    demo.add_argument(
        "--clipSeconds", type=_clipSeconds, default=DEMO_CLIP_SECONDS, metavar="N",
        help=f"length of the generated test clip, 1 to {MAX_CLIP_SECONDS}, cut into 2 s segments "
        f"(default: {DEMO_CLIP_SECONDS})",
    )
    demo.add_argument(
        "--clipSize", type=_clipSize, default=DEMO_CLIP_SIZE, metavar="WxH",
        help=f"width and height of the test clip, even, {MIN_CLIP_SIDE} to {MAX_SIDE} "
        f"(default: {DEMO_CLIP_SIZE[0]}x{DEMO_CLIP_SIZE[1]})",
    )
    demo.add_argument("--verbose", action="store_true", help="log to stderr")
    return parser


def _startLogging(enabled):
    if enabled:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])


def _tlsOptions(args, host):
    from livepeer_tx.tls import clientTLSOptions, parseFingerprint

    if args.insecure:
        print("warning: --insecure: the orchestrator's certificate is not checked", file=sys.stderr)
        return clientTLSOptions(host, insecure=True)
    if args.orchCertFingerprint:
        return clientTLSOptions(host, fingerprint=parseFingerprint(args.orchCertFingerprint))
    if args.orchCert:
        return clientTLSOptions(host, caFile=args.orchCert)
    return None


def formatResult(result):
    """
    One human-readable line for a L{livepeer_tx.gateway.push.SegmentResult}.
    """
    line = (
        f"seq={result.seq} status={result.status if result.status is not None else '-'} "
        f"renditions={len(result.renditions)} pixels={result.pixels} "
        f"latency={result.latency * 1000:.0f}ms"
    )
    if result.ok:
        line += (
            f" upload={(result.uploadSeconds or 0) * 1000:.0f}ms"
            f" transcode={(result.transcodeSeconds or 0) * 1000:.0f}ms"
            f" download={(result.downloadSeconds or 0) * 1000:.0f}ms"
        )
    else:
        line += f" error={json.dumps(result.error)}"
    return line


def formatSummary(summary):
    """
    The summary line(s) for L{livepeer_tx.gateway.push.summarize} output.
    """

    def ms(value):
        return "-" if value is None else f"{value * 1000:.0f}ms"

    text = (
        f"segments: {summary['ok']} ok, {summary['failed']} failed of {summary['segments']}; "
        f"latency p50={ms(summary['latencyP50'])} p95={ms(summary['latencyP95'])}; "
        f"pixels={summary['pixels']}"
    )
    if summary.get("wallSeconds") is not None:
        text += f"; {summary['sourceSeconds']:.1f} s of video in {summary['wallSeconds']:.1f} s"
    return text


async def runPush(reactor, args):
    """
    The C{push} command.

    @return: the exit status.
    """
    from livepeer_tx.gateway.push import (
        SegmentPusher,
        parseOrchAddr,
        pushSegments,
        summarize,
        writeRenditions,
    )
    from livepeer_tx.gateway.segmenter import SegmenterError, segmentFile

    try:
        _, host, _ = parseOrchAddr(args.orchAddr)
        tlsOptions = _tlsOptions(args, host)
    except (ValueError, OSError) as e:
        print(f"livepeer-tx push: {e}", file=sys.stderr)
        return 2
    manifestId = args.manifestId or secrets.token_hex(8)
    workDir = tempfile.mkdtemp(prefix="livepeer-tx-push-")
    pusher = SegmentPusher(
        reactor, args.orchAddr, tlsOptions, args.profiles, manifestId, timeout=args.timeout
    )
    try:
        reencode = {"auto": None, "always": True, "never": False}[args.reencode]
        try:
            segments = await segmentFile(
                reactor, args.input, workDir, args.segmentDuration, reencode=reencode
            )
        except SegmenterError as e:
            print(f"livepeer-tx push: {e}", file=sys.stderr)
            return 1
        if not args.json:
            print(
                f"pushing {len(segments)} segments of {args.input} to {pusher.segmentURL} "
                f"(manifestId={manifestId}, profiles={','.join(p.name for p in args.profiles)})"
            )

        hinted = []

        async def report(result):
            if args.out and result.ok:
                await writeRenditions(reactor, result, args.out)
            if not args.json:
                print(formatResult(result), flush=True)
                if _looksLikeTrustProblem(result) and tlsOptions is None and not hinted:
                    hinted.append(True)
                    print(
                        "  hint: the orchestrator's certificate is probably self-signed; pass "
                        "--orchCert <its dataDir>/cert.pem or --orchCertFingerprint",
                        flush=True,
                    )

        started = reactor.seconds()
        results = await pushSegments(
            reactor,
            pusher,
            segments,
            concurrency=args.concurrency,
            onResult=lambda r: Deferred.fromCoroutine(report(r)),
        )
        summary = summarize(results, reactor.seconds() - started)
    finally:
        await pusher.close()
        shutil.rmtree(workDir, ignore_errors=True)
    if args.json:
        document = {
            "orchAddr": args.orchAddr,
            "manifestId": manifestId,
            "profiles": [p.name for p in args.profiles],
            "segments": [r.toDict() for r in results],
            "summary": summary,
        }
        print(json.dumps(document, indent=2))
    else:
        print(formatSummary(summary))
    return 0 if summary["failed"] == 0 else 1


def _looksLikeTrustProblem(result):
    return bool(result.error) and "certificate verify failed" in result.error


def _runCommand(reactor, coroutineFunction, args):
    async def run():
        status = await coroutineFunction(reactor, args)
        if status:
            raise SystemExit(status)

    return Deferred.fromCoroutine(run())


def main(argv=None):
    """
    Entry point of the C{livepeer-tx} console script.
    """
    args = buildParser().parse_args(argv)
    _startLogging(args.verbose)
    if args.command == "push":
        if not os.path.isfile(args.input):
            print(f"livepeer-tx push: no such file: {args.input}", file=sys.stderr)
            sys.exit(2)
        react(_runCommand, (runPush, args))
    elif args.command == "demo":
        from livepeer_tx.gateway.demo import runDemo

        react(_runCommand, (runDemo, args))


if __name__ == "__main__":
    main()
