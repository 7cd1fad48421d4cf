# -*- test-case-name: tests.test_golivepeer_e2e,tests.test_grpc_transcoders -*-
"""
A transcoder that talks to an orchestrator as go-livepeer's stock transcoder
does (golivepeer-wire.md, section 1), written from that reference for
tests/test_grpc_transcoders.py; run as
C{python golivepeer_transcoder.py HOST:PORT SECRET CAPACITY MODE CERT}.

It opens C{RegisterTranscoder} with grpcio and, for each C{NotifySegment},
downloads the URL with a plain HTTP/1.1 GET (no credentials, as Go's client),
stands in for FFmpeg (each rendition is a function of the input's hash and the
profile's name; its pixels are width x height x 60) and posts the renditions
as C{multipart/mixed} to C{/transcodeResults} over HTTP/2 only, with
C{Authorization}, C{Credentials}, C{TaskId} and C{Pixels} (the input's length
here). It prints C{notify TASKID URL}, C{posted TASKID STATUS},
C{teardown SESSION} and C{ended CODE DETAILS} lines. MODE C{hang} only prints
the C{notify} lines; MODE C{ffmpeg} transcodes for real with the C{ffmpeg}
command (each profile's size and bitrate, H.264 in MPEG-TS, audio copied),
and reports pixels as frames x width x height.
"""

import hashlib
import http.client
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

import grpc
import h2.config
import h2.connection
import h2.events

from livepeer_tx.proto import lp_rpc_pb2 as pb

DEFAULT_CAPABILITIES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 26)


def download(url, context):
    """
    GET the task input over HTTP/1.1, without credentials, as Go's client does.
    """
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=4)
    connection.request("GET", parts.path)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status} {response.reason}")
    return data


def transcode(data, segData):
    """
    The stand-in for FFmpeg: C{(data, pixels)} per profile, in request order.
    """
    profiles = segData.fullProfiles3 or segData.fullProfiles2 or segData.fullProfiles
    digest = hashlib.sha256(data).hexdigest()
    return [(f"{p.name}:{digest}".encode() * 4, p.width * p.height * 60) for p in profiles]


def frameCount(path):
    """
    C{(width, height, frames)} of a file's video, its frames counted from its packets.
    """
    output = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
         "stream=nb_read_packets,width,height", "-of", "json", path],
        check=True, capture_output=True, text=True, timeout=60).stdout
    stream = json.loads(output)["streams"][0]
    return int(stream["width"]), int(stream["height"]), int(stream["nb_read_packets"])


def transcodeWithFFmpeg(data, segData):
    """
    Real renditions, in request order, with their encoded pixels; and the
    decoded pixels of the input.
    """
    profiles = segData.fullProfiles3 or segData.fullProfiles2 or segData.fullProfiles
    with tempfile.TemporaryDirectory() as work:
        source = os.path.join(work, "in.ts")
        with open(source, "wb") as f:
            f.write(data)
        renditions = []
        for index, p in enumerate(profiles):
            out = os.path.join(work, f"out{index}.ts")
            video = ["-vf", f"scale={p.width}:{p.height}"] + (["-r", str(p.fps)] if p.fps else [])
            subprocess.run(
                ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source] + video
                + ["-c:v", "libx264", "-preset", "ultrafast", "-b:v", str(p.bitrate), "-c:a", "copy",
                   "-f", "mpegts", out],
                check=True, capture_output=True, timeout=120)
            width, height, frames = frameCount(out)
            with open(out, "rb") as f:
                renditions.append((f.read(), width * height * frames))
        width, height, frames = frameCount(source)
    return renditions, width * height * frames


def multipartBody(renditions, boundary):
    """
    The renditions as Go's mime/multipart writer lays them out.
    """
    body = b""
    for index, (data, pixels) in enumerate(renditions):
        body += (b"\r\n" if index else b"") + b"--" + boundary + b"\r\n"
        body += b"Content-Length: %d\r\nContent-Type: video/mp2t\r\nPixels: %d\r\n\r\n" % (len(data), pixels) + data
    return body + b"\r\n--" + boundary + b"--\r\n"


def postResults(orchAddr, context, headers, body):
    """
    POST /transcodeResults over HTTP/2; the response status.
    """
    host, port = orchAddr.rsplit(":", 1)
    with context.wrap_socket(socket.create_connection((host, int(port)), timeout=30), server_hostname=host) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.send_headers(1, [
            (b":method", b"POST"), (b":scheme", b"https"), (b":authority", orchAddr.encode()),
            (b":path", b"/transcodeResults"), (b"content-length", b"%d" % len(body)),
        ] + headers)
        status, sent, done = None, 0, False
        if not body:
            conn.end_stream(1)
        while not done:
            while sent < len(body):
                window = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                conn.send_data(1, body[sent:sent + window], end_stream=sent + window >= len(body))
                sent += window
            tls.sendall(conn.data_to_send())
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
        tls.sendall(conn.data_to_send())
    return status


def main(orchAddr, secret, capacity, mode, certPath):
    """
    Register, then work every NotifySegment until the stream ends.
    """
    with open(certPath, "rb") as f:
        certificate = f.read()
    downloadContext = ssl.create_default_context(cadata=certificate.decode())
    resultsContext = ssl.create_default_context(cadata=certificate.decode())
    resultsContext.set_alpn_protocols(["h2"])
    words = [0]
    for capability in DEFAULT_CAPABILITIES:
        words[0] |= 1 << capability
    request = pb.RegisterRequest(secret=secret, capacity=int(capacity), capabilities=pb.Capabilities(
        bitstring=words, capacities={c: 1 for c in DEFAULT_CAPABILITIES}, version="0.8.0"))
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate)
    with grpc.secure_channel(orchAddr, credentials) as channel:
        register = channel.unary_stream("/net.Transcoder/RegisterTranscoder",
                                        request_serializer=pb.RegisterRequest.SerializeToString,
                                        response_deserializer=pb.NotifySegment.FromString)
        try:
            for notify in register(request):
                if not notify.url:
                    print("teardown", notify.segData.auth_token.session_id, flush=True)
                    continue
                print("notify", notify.taskId, notify.url, flush=True)
                if mode == "hang":
                    continue
                headers = [(b"authorization", b"Livepeer-Transcoder-1.0"), (b"credentials", secret.encode()),
                           (b"taskid", b"%d" % notify.taskId)]
                try:
                    data = download(notify.url, downloadContext)
                except Exception as e:
                    body = str(e).encode()
                    headers += [(b"content-type", b"livepeer/transcoding-error"), (b"pixels", b"0")]
                else:
                    if mode == "ffmpeg":
                        renditions, decodedPixels = transcodeWithFFmpeg(data, notify.segData)
                    else:
                        renditions, decodedPixels = transcode(data, notify.segData), len(data)
                    boundary = secrets.token_hex(10).encode()
                    body = multipartBody(renditions, boundary)
                    headers += [(b"content-type", b"multipart/mixed; boundary=" + boundary),
                                (b"pixels", b"%d" % decodedPixels)]
                print("posted", notify.taskId, postResults(orchAddr, resultsContext, headers, body), flush=True)
        except grpc.RpcError as e:
            print("ended", e.code().name, e.details(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
