"""A small DevTools-protocol client for headless Chromium over --remote-debugging-pipe.

Chromium reads commands from fd 3 and writes replies and events to fd 4, each a JSON object
ended by a NUL byte, so no websocket library is needed.

    with Browser.start() as browser:
        page = browser.new_page(1280, 800)
        page.navigate("file:///.../index.html")
        page.evaluate("document.title")
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path():
    """The Chromium binary: $SPARSA_CHROMIUM, else the first of CHROMIUM_NAMES on PATH (or None)."""
    if os.environ.get("SPARSA_CHROMIUM"):
        return os.environ["SPARSA_CHROMIUM"]
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    return None


class ProtocolError(RuntimeError):
    pass


class Browser:
    def __init__(self, process, to_browser, from_browser, profile):
        self.process, self._out, self._in, self._profile = process, to_browser, from_browser, profile
        self._buffer = b""
        self._next_id = 0
        self.events = []          # (sessionId, method, params) not yet looked at

    @classmethod
    def start(cls, binary=None):
        binary = binary or chromium_path()
        if binary is None:
            raise FileNotFoundError("no Chromium found (install Debian's chromium, or set SPARSA_CHROMIUM)")
        profile = tempfile.mkdtemp(prefix="sparsa-chromium-")
        # fd 3: commands into Chromium; fd 4: replies out of it. Chromium's ends are first moved
        # to fds >= 5, so that placing them at 3 and 4 in the child clobbers neither.
        cmd_read, cmd_write = os.pipe()
        reply_read, reply_write = os.pipe()
        child_cmd = fcntl.fcntl(cmd_read, fcntl.F_DUPFD_CLOEXEC, 5)
        child_reply = fcntl.fcntl(reply_write, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(cmd_read)
        os.close(reply_write)
        args = [binary, "--headless=new", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions",
                "--user-data-dir=" + profile, "about:blank"]
        if os.geteuid() == 0:
            # Chromium's sandbox refuses to start as root (CI containers run as root).
            args.insert(1, "--no-sandbox")

        def fds():  # in the child: dup2 leaves 3 and 4 open across exec; every other fd closes
            os.dup2(child_cmd, 3)
            os.dup2(child_reply, 4)
            os.closerange(5, os.sysconf("SC_OPEN_MAX"))

        process = subprocess.Popen(args, close_fds=False, preexec_fn=fds, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_cmd)
        os.close(child_reply)
        return cls(process, cmd_write, reply_read, profile)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # already gone: kill it below
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._out)
        os.close(self._in)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium sent nothing in time")
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise ProtocolError("Chromium closed its DevTools pipe (did it crash? exit code %s)" % self.process.poll())
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=60):
        """Sends one command and returns its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ProtocolError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            if "method" in reply:
                self.events.append((reply.get("sessionId"), reply["method"], reply.get("params", {})))

    def new_page(self, width, height):
        target = self.send("Target.createTarget", {"url": "about:blank"})
        session = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page


class Page:
    def __init__(self, browser, session):
        self.browser, self.session = browser, session

    def send(self, method, params=None, timeout=60):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def navigate(self, url):
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression, timeout=60):
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ProtocolError("JavaScript threw: %s\n  in: %s" % (text, expression[:200]))
        return result["result"].get("value")

    def wait_for(self, expression, timeout=30, poll=0.02):
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError("waited %g s for: %s" % (timeout, expression))
            time.sleep(poll)

    def insert_text(self, text):
        """Types text into the focused element, as an IME or a paste would (one input event)."""
        self.send("Input.insertText", {"text": text})

    def press(self, key, code, key_code, text=None, modifiers=0):
        """One key pressed and released (Input.dispatchKeyEvent), e.g. press("Enter", "Enter", 13, "\\r")."""
        down = {"type": "keyDown" if text else "rawKeyDown", "key": key, "code": code,
                "windowsVirtualKeyCode": key_code, "modifiers": modifiers}
        if text:
            down["text"] = text
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                             "windowsVirtualKeyCode": key_code, "modifiers": modifiers})

    def screenshot(self):
        """The page as PNG bytes."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
