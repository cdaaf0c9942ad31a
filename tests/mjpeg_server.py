"""A small MJPEG-over-HTTP camera for the live-source tests: ``multipart/x-mixed-replace`` JPEG frames.

Run as its own process so a test can kill it (SIGKILL, like a camera losing power) and start it again on the
same port::

    python tests/mjpeg_server.py --port 8554 --frames 'tests/fixtures/bundle_v1/frames/*.png' --fps 25

It prints ``ready PORT`` once it listens, then streams the images in a loop to every client at ``--fps``.
``--size W`` resizes the frames (square), so a test can tell the frames of two server runs apart.
``--stall-after N`` stops sending after N frames on each connection but keeps it open (a frozen camera).
"""

from __future__ import annotations

import argparse
import glob
import http.server
import time

import cv2


def _jpegs(pattern: str, size: int | None) -> list[bytes]:
    out = []
    for path in sorted(glob.glob(pattern)):
        img = cv2.imread(path)
        if size:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    if not out:
        raise SystemExit(f"no images match {pattern!r}")
    return out


def make_handler(
    jpegs: list[bytes], fps: float, stall_after: int | None = None
) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler streaming ``jpegs`` in a loop at ``fps`` frames per second (``stall_after`` frames
    per connection, then silence on an open connection)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            i = 0
            try:
                while stall_after is None or i < stall_after:
                    jpg = jpegs[i % len(jpegs)]
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpg + b"\r\n")
                    self.wfile.flush()
                    i += 1
                    time.sleep(1 / fps)
                while True:  # stalled: the socket stays open, nothing more comes
                    time.sleep(1)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--frames", required=True, help="glob of images to stream")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--stall-after", type=int, default=None)
    args = ap.parse_args()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(_jpegs(args.frames, args.size), args.fps, args.stall_after)
    )
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()  # until killed


if __name__ == "__main__":
    main()
