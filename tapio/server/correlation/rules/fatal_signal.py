"""fatal_signal: a process killed by a signal in [fatal_signal] signals (SIGSEGV, SIGABRT, ...),
with its exec, its parent, and the signal's code and sender."""
import signal as _signal

from tapio import vocab
from tapio.server.correlation.groups import SI_CODES, subject_name, where
from tapio.server.correlation.state import MAX_PENDING, SEC, Rule, process_entry


class _Pending:
    __slots__ = ("pid", "signal", "exit", "due_ns")

    def __init__(self, pid, due_ns):
        self.pid = pid
        self.signal = None
        self.exit = None
        self.due_ns = due_ns


class FatalSignal(Rule):
    kind = "fatal_signal"
    # it names the process by its exec (program, command line, the parent's program): one held
    # back leaves it known by its comm and exit only
    routine_types = ("exec",)

    @classmethod
    def core_options(cls, config):
        return {"hot_signals": config.fatal_signal_numbers() if config.fatal_signal.enabled else ()}

    def __init__(self, state):
        super().__init__(state)
        self.cfg = self.config.fatal_signal
        self.signals = self.config.fatal_signal_numbers() if self.cfg.enabled else frozenset()
        self.pending = {}                          # pid -> _Pending

    def stats(self):
        return {"pending_fatal": len(self.pending)}

    def on_event(self, event):
        kind = event["type"]
        if kind == "signal":
            if event["signal"]["signal"] not in self.signals:
                return
            pending = self._pending(event["pid"], event["timestamp_ns"] + int(self.cfg.grace * SEC))
            if pending is not None and pending.signal is None:
                pending.signal = event
        elif kind == "exit":
            if (event.get("exit") or {}).get("signal") not in self.signals:
                return
            pending = self._pending(event["pid"], event["timestamp_ns"] + int(self.cfg.grace * SEC))
            if pending is None:
                return
            pending.exit = event
            # the exit is the end of the story: close soon (a late signal event may still come)
            pending.due_ns = min(pending.due_ns, event["timestamp_ns"] + SEC // 2)

    def _pending(self, pid, due_ns):
        pending = self.pending.get(pid)
        if pending is None:
            if len(self.pending) >= MAX_PENDING:
                return None
            pending = self.pending[pid] = _Pending(pid, due_ns)
        return pending

    def on_tick(self, now, force):
        for pid, pending in list(self.pending.items()):
            if force or pending.due_ns <= now:
                del self.pending[pid]
                self._close(pending)

    def _close(self, pending):
        sig_ev, exit_ev = pending.signal, pending.exit
        base = sig_ev or exit_ev
        pid = pending.pid
        group = self.state.new_group(self.kind, base["timestamp_ns"])
        node = self.core.process(pid)
        exec_ev = None
        if node is not None and node["last_exec"] is not None:
            exec_ev = self.recent.event(node["last_exec"])
            if exec_ev is not None and exec_ev["pid"] != pid:
                exec_ev = None
        for e in (exec_ev, sig_ev, exit_ev):
            if e is not None:
                group.add_event(e)
        group.set_subject(exit_ev or sig_ev)
        if exec_ev is not None:
            group.set_subject(exec_ev)
        number = sig_ev["signal"]["signal"] if sig_ev else exit_ev["exit"]["signal"]
        name = vocab.signal_text(number)
        ppid = ((exit_ev or {}).get("ppid") or (node or {}).get("ppid")
                or (sig_ev or {}).get("ppid") or 0)
        parent = self.core.process(ppid) if ppid else None
        parent_exec = self.recent.event(parent["last_exec"]) if parent and parent["last_exec"] else None
        core = bool(exit_ev and exit_ev["exit"].get("core_dumped"))
        entry = process_entry(node if node and node["pid"] == pid else None, exec_ev, exit_ev,
                              base["timestamp_ns"], fallback=base)
        group.attributes.update(
            signal=name, signal_number=number, core_dumped=core, ppid=ppid,
            parent_comm=(parent or {}).get("comm") or (parent_exec or {}).get("comm"),
            parent_executable=((parent_exec or {}).get("process") or {}).get("executable"),
            pids=[pid], processes=[entry])
        if sig_ev is not None:
            s = sig_ev["signal"]
            group.attributes.update(si_code=s["code"], sender_pid=s["sender_pid"],
                                    sender_comm=s["sender_comm"])
            if s["sender_pid"] == pid and s["code"] > 0:
                what = SI_CODES.get(number, {}).get(s["code"], f"si_code {s['code']}")
                group.root_cause = f"a fault in the process itself: {name} ({what})"
            elif s["sender_pid"] == pid or s["sender_pid"] == 0:
                group.root_cause = (f"the process raised {name} itself (abort(), a failed assertion "
                                    "or an uncaught exception)" if number == _signal.SIGABRT
                                    else f"the process raised {name} itself")
            else:
                group.root_cause = f"{name} sent by {s['sender_comm']} (pid {s['sender_pid']})"
        who = subject_name(exec_ev or exit_ev or base)
        place = where((exit_ev or base).get("context") or (exec_ev or {}).get("context"))
        parent_text = ""
        if ppid:
            pname = group.attributes.get("parent_comm")
            parent_text = f"; parent {pname} (pid {ppid})" if pname else f"; parent pid {ppid}"
        group.summary = (f"{who} (pid {pid}{', ' + place if place else ''}) killed by {name}"
                         f"{' (core dumped)' if core else ''}{parent_text}")
        group.severity = "error"
        group.confidence = 1.0 if sig_ev is not None and exit_ev is not None else 0.8
        group.status = "closed"
        self.state.finish(group)
