"""An independent HBONE client (Python ssl + the h2 library), to check our HBONE server interoperates on the
wire with a peer that was not written alongside it.

Usage: hbone_client.py CERT_CHAIN_PEM KEY_PEM ROOT_PEM SERVER_IP:PORT AUTHORITY EXPECTED_SPIFFE_ID MESSAGE
Prints the bytes echoed back through the tunnel; exits non-zero on any protocol or identity error.
"""
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main() -> int:
    chain, key, root, server, authority, expected_id, message = sys.argv[1:8]
    host, port = server.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # HBONE identities are URI SANs, checked below
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(root)
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=10)
    tls = ctx.wrap_socket(raw)
    if tls.selected_alpn_protocol() != "h2":
        print(f"ALPN was {tls.selected_alpn_protocol()!r}", file=sys.stderr)
        return 2
    uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
    if uris != [expected_id]:
        print(f"server identity {uris} is not {expected_id}", file=sys.stderr)
        return 3

    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
    tls.sendall(conn.data_to_send())

    status = None
    echoed = b""
    sent = False
    done = False
    while not done:
        data = tls.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status")
                if status != b"200":
                    print(f"CONNECT answered {status!r}", file=sys.stderr)
                    return 4
                conn.send_data(sid, message.encode(), end_stream=True)
                sent = True
            elif isinstance(ev, h2.events.DataReceived):
                echoed += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        tls.sendall(conn.data_to_send())
    if not sent:
        print("no response to CONNECT", file=sys.stderr)
        return 5
    sys.stdout.write(echoed.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
