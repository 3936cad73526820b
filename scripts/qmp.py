#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Sends one QMP command to a running QEMU and prints the reply as JSON.

    qmp.py SOCKET COMMAND [JSON-ARGUMENTS]

Exits 1 if QEMU answers with an error. Asynchronous events that arrive
before the reply are skipped.
"""
import json
import socket
import sys


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    path, command = sys.argv[1], sys.argv[2]
    arguments = json.loads(sys.argv[3]) if len(sys.argv) == 4 else {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        stream = sock.makefile("rw")
        json.loads(stream.readline())  # the greeting
        for request in ({"execute": "qmp_capabilities"},
                        {"execute": command, "arguments": arguments}):
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "event" not in reply:
                    break
            if "error" in reply:
                print(json.dumps(reply["error"]), file=sys.stderr)
                return 1
        print(json.dumps(reply.get("return")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
