# -*- test-case-name: tests.test_ffmpeg,tests.test_e2e -*-
"""
Test media made with FFmpeg (test-only helpers; they block, so never call them
from reactor code).

    makeClip(path, 640, 360, seconds=2, fps=30)            # H.264 + AAC MPEG-TS
    probe(path)  # {"width", "height", "frames", "duration", "audio"} or None

Both use Debian's C{ffmpeg}/C{ffprobe} when installed, else the
C{imageio-ffmpeg} binary (which has no ffprobe: L{probe} then returns L{None}).
"""

import json
import shutil
import subprocess

__all__ = ["ffmpegBinaries", "ffprobePath", "makeClip", "probe"]


def ffmpegBinaries():
    """
    The FFmpeg executables available here, as C{{label: path}}: C{"system"}
    for the one on C{PATH}, C{"imageio"} for the imageio-ffmpeg wheel's.
    """
    found = {}
    system = shutil.which("ffmpeg")
    if system:
        found["system"] = system
    try:
        import imageio_ffmpeg

        found["imageio"] = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        pass
    return found


def ffprobePath():
    """
    The C{ffprobe} executable on C{PATH}, or L{None}.
    """
    return shutil.which("ffprobe")


def makeClip(path, width, height, seconds, fps, audio=True, ffmpegPath=None):
    """
    Write an MPEG-TS clip: C{testsrc2} video (H.264, yuv420p, x264
    ultrafast) of the given size, duration and integer frame rate, plus a
    mono AAC sine tone if C{audio}. It has exactly C{seconds × fps} frames.

    @return: C{path}
    """
    ffmpegPath = ffmpegPath or next(iter(ffmpegBinaries().values()))
    args = [ffmpegPath, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    args += ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps)]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k"]
    args += ["-f", "mpegts", path]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return path


def probe(path):
    """
    Probe a media file's first video stream with C{ffprobe}, counting frames.

    @return: a dict with C{width}, C{height}, C{frames} (decoded), C{duration}
        (seconds, of the video stream) and C{audio} (whether it has an audio
        stream), or L{None} when there is no ffprobe.
    """
    ffprobe = ffprobePath()
    if ffprobe is None:
        return None
    result = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_streams", "-of", "json", path],
        check=True,
        capture_output=True,
        timeout=60,
    )
    streams = json.loads(result.stdout)["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    return {
        "width": int(video["width"]),
        "height": int(video["height"]),
        "frames": int(video["nb_read_frames"]),
        "duration": float(video.get("duration", "nan")),
        "audio": any(s["codec_type"] == "audio" for s in streams),
    }
