#!/usr/bin/env python3
"""What a misbehaving receiver costs the other destinations of the same run.

Run A: a campaign to well-behaved destinations only (Postfix's smtp-sink on loopback).
Run B: the same campaign plus recipients at destinations whose receivers misbehave in the
ways docs/reliability.md lists (a 421 or a stray line behind the EHLO answer, a stall past
every timeout, a reset in the middle of DATA, garbage after 354, an endless multi-line
reply, a reply dribbled a byte at a time). For each run: the time from the batch landing in
incoming/ to the last Delivery at a well-behaved destination, and whether the engine kept
running. The claim checked: run B's figure is within 10% of run A's.

    cargo build --release && python3 benches/hostile_neighbours.py [--runs 3] [--good 100000]

Everything listens on 127.0.0.1; every process started here is stopped by its pid, and every
wait is bounded.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "spate")
GOOD_DOMAINS = 10
HOSTILE_PER_KIND = 50
HEADER = {
    "campaign": "neighbours",
    "from": "bounces@sender.example",
    "template": "From: <news@sender.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ name }}\r\n\r\n"
    + ("Hello {{ name }}, " + "x" * 60 + "\r\n") * 40,
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Hostile(threading.Thread):
    """A receiver that misbehaves in one way, on 127.0.0.1."""

    def __init__(self, kind, stop):
        super().__init__(daemon=True)
        self.kind, self.stop = kind, stop
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def lines(self, conn):
        buf = b""
        while not self.stop.is_set():
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                yield line

    def serve(self, conn):
        conn.settimeout(0.2)
        k = self.kind
        try:
            if k == "stall":
                while not self.stop.is_set():
                    time.sleep(0.2)
                return
            if k == "dribble":
                for b in b"220 " + b"x" * 500 + b"\r\n":
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([b]))
                    time.sleep(0.5)
                return
            if k == "endless":
                conn.sendall(b"220 hostile\r\n")
                for line in self.lines(conn):
                    if line.upper().startswith(b"EHLO"):
                        while not self.stop.is_set():
                            conn.sendall(b"250-x\r\n" * 64)
                            time.sleep(0.01)
                return
            conn.sendall(b"220 hostile\r\n")
            data = False
            for line in self.lines(conn):
                if data:
                    if line == b".":
                        data = False
                        conn.sendall(b"250 ok\r\n")
                    elif k == "reset_mid_data":
                        conn.close()
                        return
                    continue
                up = line.upper()
                if up.startswith(b"EHLO"):
                    trailer = {"ehlo_421": b"421 4.7.0 bye\r\n", "ehlo_220": b"220 t\r\n"}
                    conn.sendall(b"250-hostile\r\n250 PIPELINING\r\n" + trailer.get(k, b""))
                elif up == b"DATA":
                    if k == "garbage_after_354":
                        conn.sendall(b"354 go\r\n\x00\xff garbage \x1b[2J\r\n250 ok\r\n")
                    else:
                        conn.sendall(b"354 go\r\n")
                        data = True
                elif up == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


KINDS = ["ehlo_421", "ehlo_220", "stall", "reset_mid_data", "garbage_after_354", "endless", "dribble"]


def domain_of(kind):
    return kind.replace("_", "-") + ".example"


def ts_ms(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp() * 1000


def cpu_seconds(pid):
    """User plus system CPU time of process `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(work, sink_port, good, hostile):
    """Returns (seconds to the last good delivery, engine alive at the end, hostile outcomes,
    the engine's CPU seconds and this harness's, both up to the last good delivery)."""
    stop = threading.Event()
    harness_cpu = time.process_time()
    servers = []
    routes = [f'[[routes]]\ndomain = "good{i}.example"\nhosts = ["127.0.0.1:{sink_port}"]\n' for i in range(GOOD_DOMAINS)]
    if hostile:
        for k in KINDS:
            h = Hostile(k, stop)
            h.start()
            servers.append(h)
            routes.append(f'[[routes]]\ndomain = "{domain_of(k)}"\nhosts = ["127.0.0.1:{h.port}"]\n')
    base = tempfile.mkdtemp(dir=work)
    os.makedirs(f"{base}/spool/tmp")
    os.makedirs(f"{base}/spool/incoming")
    with open(f"{base}/spate.toml", "w") as f:
        f.write(
            f'[engine]\nshards = 2\ndata_dir = "{base}/data"\n[spool]\ndir = "{base}/spool"\n'
            f'[log]\ndir = "{base}/log"\n[dns]\nnameservers = ["127.0.0.1:9"]\n'
            f'[delivery]\nretry_first = "2s"\nretry_max_interval = "2s"\n' + "".join(routes)
        )
    stderr = open(f"{base}/stderr", "w")
    engine = subprocess.Popen([BIN, "run", "-c", f"{base}/spate.toml"], stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while "spate: running" not in open(f"{base}/stderr").read():
            if time.time() > deadline or engine.poll() is not None:
                raise SystemExit("engine did not start: " + open(f"{base}/stderr").read())
            time.sleep(0.05)
        lines = [json.dumps(HEADER)]
        for i in range(good):
            lines.append(json.dumps({"to": f"u{i}@good{i % GOOD_DOMAINS}.example", "vars": {"name": f"N{i}"}}))
        if hostile:
            for k in KINDS:
                for i in range(HOSTILE_PER_KIND):
                    lines.append(json.dumps({"to": f"u{i}@{domain_of(k)}", "vars": {"name": "H"}}))
        with open(f"{base}/spool/tmp/c.jsonl", "w") as f:
            f.write("\n".join(lines) + "\n")
        landed = time.time() * 1000
        os.rename(f"{base}/spool/tmp/c.jsonl", f"{base}/spool/incoming/c.jsonl")
        log = f"{base}/log/deliveries.jsonl"
        delivered, last, deadline = 0, landed, time.time() + 600
        seen = 0
        while delivered < good:
            if time.time() > deadline:
                raise SystemExit(f"only {delivered}/{good} good recipients delivered in 600 s")
            if engine.poll() is not None:
                raise SystemExit("engine exited: " + open(f"{base}/stderr").read()[-2000:])
            time.sleep(0.2)
            if not os.path.exists(log):
                continue
            with open(log) as f:
                f.seek(seen)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            seen += len(complete.encode())
            for line in complete.splitlines():
                r = json.loads(line)
                if r.get("type") == "Delivery" and r["domain"].startswith("good"):
                    delivered += 1
                    last = max(last, ts_ms(r["ts"]))
        engine_cpu = cpu_seconds(engine.pid)
        harness_cpu = time.process_time() - harness_cpu
        # Let the hostile servers keep at it a little longer: the engine must stay up.
        time.sleep(3)
        alive = engine.poll() is None
        outcomes = {}
        with open(log) as f:
            for line in f:
                r = json.loads(line)
                if not r["domain"].startswith("good") and r["type"] != "Reception":
                    outcomes[r["type"]] = outcomes.get(r["type"], 0) + 1
        return (last - landed) / 1000, alive, outcomes, engine_cpu, harness_cpu
    finally:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(timeout=60)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
        stop.set()
        for s in servers:
            s.join(timeout=5)
            s.sock.close()
        stderr.close()
        shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--good", type=int, default=100000)
    args = ap.parse_args()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(sink_bin):
        raise SystemExit("smtp-sink not found (apt-get install postfix)")
    work = tempfile.mkdtemp()
    port = free_port()
    sink = subprocess.Popen([sink_bin, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        results = {"without": [], "with": []}
        for n in range(args.runs):
            for label, hostile in (("without", False), ("with", True)):
                secs, alive, outcomes, engine_cpu, harness_cpu = run_once(work, port, args.good, hostile)
                results[label].append(secs)
                extra = f", hostile outcomes {outcomes}" if hostile else ""
                print(f"run {n + 1} {label:7} hostile receivers: last good delivery {secs:6.2f} s, "
                      f"engine CPU {engine_cpu:5.2f} s, harness CPU {harness_cpu:5.2f} s, "
                      f"engine {'running' if alive else 'EXITED'}{extra}", flush=True)
                if not alive:
                    sys.exit(1)
        a = sorted(results["without"])[len(results["without"]) // 2]
        b = sorted(results["with"])[len(results["with"]) // 2]
        print(f"median without: {a:.2f} s, with: {b:.2f} s, ratio {b / a:.3f} (claim: <= 1.10)")
    finally:
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
