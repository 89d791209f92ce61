"""The node's HTTP port (``metrics_port``): Prometheus metrics, its report,
the cluster's reports, and a status page that draws the ring.

  GET /metrics        Prometheus text format (server/metrics.py)
  GET /report.json    this node's report (server/report.py)
  GET /cluster.json   every member's report plus the ring's arcs: each
                      segment of the hash space with its replica set
  GET /               the status page (refreshes itself from /cluster.json)

Plain HTTP/1.0-style: one request per connection, answered and closed.
Bounds: a request head of 8 KiB read within 5 s, 32 connections at once
(more wait for the accept), cluster.json gathered at most once a second.
It serves no file data and accepts no changes; bind it to an address only
operators and Prometheus reach."""

from __future__ import annotations

import json
import logging
import time

import trio

from rpc.logfmt import kv

from .report import node_report, to_json
from .ring.ringmath import RING_SIZE, Ring

log = logging.getLogger("chordfs.http")
HEAD_BYTES_MAX = 8192
HEAD_TIMEOUT_S = 5.0
CONNECTIONS_MAX = 32
CLUSTER_CACHE_S = 1.0
ARCS_MAX = 4096


def ring_arcs(names: list[str], virtual_ids: int, replicas: int) -> list[dict]:
    """The circle as fractions [start, end) with the replica set of each
    segment (owner first), merged where neighbours share a replica set."""
    if not names:
        return []
    ring = Ring(names, virtual_ids)
    pieces = []
    for rng, owners in ring.segments(min(replicas, len(names))):
        start, end = rng.start / RING_SIZE, rng.end / RING_SIZE
        if end > start:
            pieces.append((start, end, list(owners)))
        else:  # wraps past the top (or the whole circle, start == end)
            pieces += [(start, 1.0, list(owners)), (0.0, end, list(owners))]
    arcs: list[dict] = []
    for a, b, owners in sorted(pieces, key=lambda p: p[0]):
        if b <= a:
            continue
        if arcs and arcs[-1]["replicas"] == owners and abs(arcs[-1]["end"] - a) < 1e-12:
            arcs[-1]["end"] = b
        else:
            arcs.append({"start": a, "end": b, "replicas": owners})
    return arcs[:ARCS_MAX]


class StatusHttp:
    def __init__(self, node, metrics, gather) -> None:
        self.node, self.metrics, self.gather = node, metrics, gather
        self._cluster: tuple[float, bytes] | None = None
        self._cluster_lock = trio.Lock()
        self._limit = trio.CapacityLimiter(CONNECTIONS_MAX)

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(self._handle, port, host=host, task_status=task_status)

    async def _handle(self, stream) -> None:
        async with self._limit:
            try:
                with trio.move_on_after(HEAD_TIMEOUT_S):
                    head = await self._read_head(stream)
                    if head is None:
                        return
                    status, ctype, body = await self._answer(head)
                    await stream.send_all(
                        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
                        "\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode() + body)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_head(stream) -> bytes | None:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            data = await stream.receive_some(HEAD_BYTES_MAX)
            if not data:
                return None
            head += data
            if len(head) > HEAD_BYTES_MAX:
                await stream.send_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                      b"Connection: close\r\nContent-Length: 0\r\n\r\n")
                return None
        return head

    async def _answer(self, head: bytes) -> tuple[str, str, bytes]:
        line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request line\n"
        method, path = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        try:
            if path == "/metrics":
                from .metrics import CONTENT_TYPE
                return "200 OK", CONTENT_TYPE, self.metrics.render(await node_report(self.node))
            if path == "/report.json":
                return "200 OK", "application/json", to_json(await node_report(self.node)).encode()
            if path == "/cluster.json":
                return "200 OK", "application/json", await self._cluster_json()
            if path in ("/", "/index.html"):
                return "200 OK", "text/html; charset=utf-8", PAGE.encode()
        except Exception as e:  # noqa: BLE001 - an operator page must not take the node down
            log.warning(kv("http.failed", node=self.node.config.node_name, path=path,
                           error=f"{type(e).__name__}: {e}"))
            return "500 Internal Server Error", "text/plain", f"{type(e).__name__}: {e}\n".encode()
        return "404 Not Found", "text/plain", b"not found\n"

    async def _cluster_json(self) -> bytes:
        async with self._cluster_lock:  # one gathering at a time, reused for a second
            cached = self._cluster
            if cached is not None and time.monotonic() - cached[0] < CLUSTER_CACHE_S:
                return cached[1]
            name = self.node.config.node_name
            reports = await self.gather([name], 2.0)
            ours = reports.get(name) or {}
            placement = ours.get("placement") or {}
            alive = sorted(m["name"] for m in ours.get("ring") or [] if m["state"] == "alive")
            members = sorted(m["name"] for m in ours.get("ring") or [] if m["state"] != "left")
            body = json.dumps({
                "node": name, "reports": reports,
                "arcs": ring_arcs(alive, placement.get("virtual_ids_per_node", 256),
                                  placement.get("replication_factor", 3)),
                # Who owned each arc with every member counted, the dead
                # too: the outer band shows what a dead node's successors
                # are covering for.
                "owners": ring_arcs(members, placement.get("virtual_ids_per_node", 256), 1),
                "generated_s": time.time(),
            }, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
            self._cluster = (time.monotonic(), body.encode())
            return self._cluster[1]


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chordfs status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} .muted{color:#777}
table{border-collapse:collapse;margin:.8em 0} td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4} .dead{color:#b00;font-weight:bold} .alive{color:#070} .suspect{color:#b60}
.insecure{background:#b00;color:#fff;padding:.4em .8em;display:inline-block;margin:.4em 0}
#wrap{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
.key{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}
</style></head><body>
<h1>chordfs cluster <span id="cluster" class="muted"></span></h1>
<div id="banner"></div>
<div class="muted" id="summary">loading...</div>
<div id="health"></div>
<div id="wrap">
<svg id="ring" width="420" height="420" viewBox="-210 -210 420 420" role="img" aria-label="hash ring"></svg>
<div><table id="members"><thead><tr><th>node</th><th>ring</th><th>role</th><th>term</th>
<th>commit</th><th>applied</th><th>used</th><th>free</th><th>blocks</th><th>share of ring</th></tr></thead>
<tbody></tbody></table>
<div id="legend"></div>
<p class="muted">Each arc of the circle is a range of block hashes, coloured by the node that owns
it; a block is stored on its owner and the next distinct nodes clockwise (its replica set, shown
when you point at an arc). Dead nodes own nothing until they return: the thin red band outside
marks the arcs they owned, which their successors now serve.</p></div></div>
<script>
const colours=["#1f77b4","#ff7f0e","#2ca02c","#9467bd","#8c564b","#e377c2","#17becf","#bcbd22","#7f7f7f","#d62728"];
function size(n){if(n==null)return"-";const u=["B","K","M","G","T"];let i=0;while(n>=1024&&i<u.length-1){n/=1024;i++}return(i?n.toFixed(1):n)+u[i]}
function arc(a,b,r1,r2){const t=x=>2*Math.PI*x-Math.PI/2;const p=(r,x)=>[r*Math.cos(t(x)),r*Math.sin(t(x))];
 const big=(b-a)>0.5?1:0;const [x1,y1]=p(r2,a),[x2,y2]=p(r2,b),[x3,y3]=p(r1,b),[x4,y4]=p(r1,a);
 return `M${x1},${y1}A${r2},${r2} 0 ${big} 1 ${x2},${y2}L${x3},${y3}A${r1},${r1} 0 ${big} 0 ${x4},${y4}Z`}
async function refresh(){
 let data;try{data=await (await fetch("cluster.json",{cache:"no-store"})).json()}catch(e){document.getElementById("summary").textContent="no answer: "+e;return}
 const reports=data.reports,names=Object.keys(reports).sort();const here=reports[data.node]||{};
 const ring={};(here.ring||[]).forEach(m=>ring[m.name]=m.state);
 const colour={};names.forEach((n,i)=>colour[n]=colours[i%colours.length]);
 document.getElementById("cluster").textContent=here.cluster||"";
 document.getElementById("banner").innerHTML=here.secure===false?'<span class="insecure">INSECURE: plain TCP, no certificates</span>':"";
 const share={};data.arcs.forEach(a=>{const o=a.replicas[0];share[o]=(share[o]||0)+(a.end-a.start)});
 let leader="none";const rows=names.map(n=>{const r=reports[n];if(r.error)return `<tr data-node="${n}"><td>${n}</td><td class="dead">unreachable</td><td colspan="8">${r.error}</td></tr>`;
  const f=r.raft||{},s=r.store||{};if(f.role==="leader")leader=n;const st=ring[n]||"?";
  return `<tr data-node="${n}"><td><span class="key" style="background:${colour[n]}"></span>${n}</td><td class="${st}">${st}</td><td>${f.role||"-"}</td><td>${f.term??"-"}</td><td>${f.commit??"-"}</td><td>${f.applied??"-"}</td><td>${size(s.used_bytes)}</td><td>${size(s.free_bytes)}</td><td>${s.chunk_count??"-"}</td><td>${((share[n]||0)*100).toFixed(1)}%</td></tr>`});
 Object.keys(ring).filter(n=>!reports[n]).forEach(n=>rows.push(`<tr data-node="${n}"><td>${n}</td><td class="${ring[n]}">${ring[n]}</td><td colspan="8"></td></tr>`));
 document.querySelector("#members tbody").innerHTML=rows.join("");
 const dead=Object.keys(ring).filter(n=>ring[n]!=="alive");
 document.getElementById("summary").textContent=`leader ${leader} · ${names.length} members · ${data.arcs.length} arcs · dead or suspect: ${dead.join(", ")||"none"} · as seen by ${data.node} at ${new Date(data.generated_s*1000).toLocaleTimeString()}`;
 const census=((reports[leader]||{}).census||{}).last;const health=document.getElementById("health");
 if(!census){health.textContent="block health: not counted yet";health.className="muted"}
 else{health.textContent=`blocks: ${census.blocks_checked} referenced, ${census.under_replicated} under-replicated, ${census.missing} missing`;
  health.textContent+=` (counted ${Math.max(0,Math.round(data.generated_s-census.finished_wall_s))} s ago)`;
  health.className=census.missing?"dead":census.under_replicated?"suspect":"alive"}
 const svg=document.getElementById("ring");
 svg.innerHTML=data.arcs.map(a=>`<path d="${arc(a.start,Math.max(a.end,a.start+1e-4),140,196)}" fill="${colour[a.replicas[0]]||"#999"}"><title>${(a.start*100).toFixed(2)}%-${(a.end*100).toFixed(2)}%: ${a.replicas.join(" → ")}</title></path>`).join("")
  +(data.owners||[]).filter(a=>dead.includes(a.replicas[0])).map(a=>`<path class="deadarc" d="${arc(a.start,Math.max(a.end,a.start+1e-4),199,209)}" fill="#d00"><title>${(a.start*100).toFixed(2)}%-${(a.end*100).toFixed(2)}% owned by ${a.replicas[0]} (${ring[a.replicas[0]]}): served by its successors</title></path>`).join("")
  +dead.map((n,i)=>`<text x="0" y="${-10+18*i}" text-anchor="middle" class="dead">✕ ${n}</text>`).join("")
  +`<text x="0" y="${dead.length*18+10}" text-anchor="middle" class="muted">${names.length-dead.length} alive</text>`;
}
refresh();setInterval(refresh,2000);
</script></body></html>
"""
