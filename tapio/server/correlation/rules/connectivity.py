"""connectivity_degradation: failed connects from one cgroup to one destination, `threshold` of
them within `window`. The compiled core (ConnectionTable) counts them and says when a destination
opens a group, changes and closes; this rule builds the group."""
from tapio import vocab
from tapio.server.correlation.groups import counted, fmt_duration, where
from tapio.server.correlation.state import Rule

RESULT_NAMES = tuple(vocab.connect_result_name(i) for i in range(len(vocab.CONNECT_RESULTS)))


class Connectivity(Rule):
    kind = "connectivity_degradation"
    # it counts the failed and the successful connects to a destination: one held back is
    # missing from those counts (it reads no accept or close)
    routine_types = ("tcp_connect",)

    @classmethod
    def core_options(cls, config):
        conn = config.connectivity
        return {"conn_threshold": conn.threshold, "conn_window_s": conn.window,
                "conn_close_after_s": conn.close_after, "conn_max_s": conn.max_duration,
                "conn_failures": config.connect_failure_codes() if conn.enabled else ()}

    def __init__(self, state):
        super().__init__(state)
        self.groups = {}                           # destination slot -> Group

    def open_groups(self):
        return list(self.groups.values())

    def stats(self):
        return {"open_connectivity": len(self.groups)}

    def on_batch(self, batch, hot, opened):
        for slot in opened or ():
            info = self.core.conn_info(slot)
            if info is None:
                continue
            group = self.state.new_group(self.kind, info["first_ns"])
            self.groups[slot] = group
            self._fill(group, info)
            self.state.open(group)

    def on_tick(self, now, force):
        updated, closed = self.core.tick_connections(now, force)
        for slot in updated:
            group = self.groups.get(slot)
            info = self.core.conn_info(slot)
            if group is not None and info is not None:
                self._fill(group, info)
                self.state.emit(group, False)
        for info in closed:
            group = self.groups.pop(info["slot"], None)
            if group is not None:
                self._fill(group, info)
                self.state.emit(group, True)

    def _fill(self, group, info):
        for ref in info["fail_refs"] + info["ok_refs"]:
            eid = self.recent.event_id(ref)
            if eid is None or not group.has_event(eid):     # each event is read once
                group.add_event(self.recent.event(ref), eid)
        if info["cgroup_id"]:
            group.cgroups.add(info["cgroup_id"])
        subject = next((e for e in group.events if e["type"] == "tcp_connect"), None)
        if subject is not None:
            group.set_subject(subject)
        addr = vocab.format_addr(info["daddr"])
        port = info["dport"]
        results = {name: n for name, n in zip(RESULT_NAMES, info["by_result"]) if n and name != "ok"}
        group.span(info["first_ns"], max(info["last_fail_ns"], info["last_ok_ns"]))
        group.attributes.update(
            destination=f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}",
            server_address=addr, server_port=port,
            network_type="ipv6" if info["family"] == 6 else "ipv4",
            failures=info["failures"], successes=info["successes"], results=results,
            last_pid=info["pid"], last_comm=info["comm"], cgroup_id=info["cgroup_id"])
        group.attributes.setdefault("pids", [])
        for e in group.events:
            if e["pid"] not in group.attributes["pids"] and len(group.attributes["pids"]) < 100:
                group.attributes["pids"].append(e["pid"])
        who = info["comm"] or f"pid {info['pid']}"
        place = where((subject or {}).get("context"))
        failures = info["failures"]
        span_ns = max(0, info["last_fail_ns"] - info["first_ns"])
        group.summary = (f"{who}{' (' + place + ')' if place else ''} failed to connect to "
                         f"{group.attributes['destination']} {failures} times in "
                         f"{fmt_duration(span_ns)} ({counted({k.replace('_', ' '): v for k, v in results.items()})}); "
                         f"{info['successes']} succeeded in between")
        top = max(results, key=results.get) if results else "other"
        group.root_cause = {
            "refused": f"nothing listens on {group.attributes['destination']} (connection refused)",
            "timed_out": f"no answer from {group.attributes['destination']} (SYNs time out: the "
                         "host is down or packets are filtered)",
            "reset": f"{group.attributes['destination']} resets the connections",
            "unreachable": f"no route to {addr}",
        }.get(top, f"connects to {group.attributes['destination']} fail")
        group.severity = ("error" if not info["successes"]
                          and failures >= 4 * self.config.connectivity.threshold else "warning")
        group.confidence = 0.9 if not info["successes"] else 0.7
