"""The DWCP example protocol: start two peers, then connect, send, receive and discover through the
resilient client.

DWCP is the small peer-to-peer message protocol this package ships as its worked example (framed
messages over TCP: hello, send, receive with acknowledgement, peer discovery). Everything here runs
on 127.0.0.1, on free ports. Run it: ``python examples/dwcp_client.py``.
"""

from __future__ import annotations

import anyio

from dwcp_resilience.dwcp import DWCPPeer, DWCPResilienceConfig, DWCPResilientClient


async def main() -> None:
    async with DWCPPeer("peer-a") as first:
        first_address = f"127.0.0.1:{first.port}"
        # A second peer that knows the first one as a seed: discovery from either finds both.
        async with DWCPPeer("peer-b", seeds=[first_address]) as second:
            second_address = f"127.0.0.1:{second.port}"
            config = DWCPResilienceConfig(
                node_id="alice", peers=(first_address,), circuit_reset_time=5.0
            )
            alice = DWCPResilientClient(config)
            bob = DWCPResilientClient(DWCPResilienceConfig(node_id="bob", peers=(first_address,)))
            async with alice, bob:
                conn = await alice.establish_connection()  # one connection, through the manager
                print("connected to", first_address)
                await conn.aclose()

                for n in range(3):
                    await alice.send_message("bob", f"hello #{n}".encode())
                for _ in range(3):
                    delivery = await bob.receive_message()
                    assert delivery is not None
                    print(f"bob received {delivery.body.decode()!r} from {delivery.sender}")
                print("bob's mailbox is empty:", await bob.receive_message() is None)

                peers = await alice.discover_peers(peer=second_address)
                print("peer-b knows:", sorted(p.address for p in peers))

                send = alice.metrics().operations["network-send"]
                print(f"network-send: {send.successes} ok, {send.failures} failed")
                print("alice healthy:", alice.is_healthy())


if __name__ == "__main__":
    anyio.run(main)
