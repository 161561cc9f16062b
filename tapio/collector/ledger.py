"""The collector's ledger: where every event it saw went.

    seen = delivered + filtered + collapsed + dropped_kernel + dropped_processor
           + dropped_buffer + throttled + undelivered

`seen` is what the source gave plus what the kernel dropped (ring-buffer reserve failures) plus
what the per-cgroup budget held back (--cgroup-budget: `throttled`, each of them counted in one
`throttled` event, which is itself an event the collector made, seen and delivered like others).
Each other term is counted where it happens: filtered and collapsed by the semantic processor
(a collapsed event counts once for each event folded into another), delivered, dropped_buffer
and undelivered by the sink (the send buffer, or the --output writer), undelivered also the
events read but not yet batched. The ledger only reads them, so its closing is a check, not a
definition: `unaccounted` is 0 when every event is in exactly one count.

With `--correlation both` every event goes out twice; the ledger follows the semantic path's
copy, and raw batches are sent without counting their events again.
"""
import dataclasses


@dataclasses.dataclass
class Totals:
    seen: int = 0
    delivered: int = 0
    filtered: int = 0
    collapsed: int = 0
    dropped_kernel: int = 0
    dropped_processor: int = 0
    dropped_buffer: int = 0
    throttled: int = 0
    undelivered: int = 0

    @property
    def unaccounted(self):
        """seen minus every fate (each field after `seen`): 0 when the ledger closes."""
        return self.seen - sum(dataclasses.astuple(self)[1:])

    def as_dict(self):
        return {**dataclasses.asdict(self), "unaccounted": self.unaccounted}


class Ledger:
    def __init__(self, pump, processor, sink):
        self.pump = pump
        self.processor = processor
        self.sink = sink

    def wire(self):
        """The running totals a batch carries: tapio.v1.Ledger's seven counts, in field order
        (cheap: no count of what is still open)."""
        stats = self.pump.stats
        shaped = self.processor.stats()
        throttled = self._throttled()
        return (stats.events + stats.kernel_drops + throttled, shaped.get("filtered", 0),
                shaped.get("collapsed", 0), stats.kernel_drops, stats.processor_drops,
                self.sink.ledger(open_events=False)["dropped_buffer"], throttled)

    def _throttled(self):
        budget = self.pump.budget
        return budget.suppressed if budget is not None else 0

    def totals(self, kernel_drops=None):
        """Now. kernel_drops: a fresher reading of the kernel's counter than the one the pump
        took at its latest batch (it is added to `seen` as well)."""
        stats = self.pump.stats
        kernel = stats.kernel_drops if kernel_drops is None else max(kernel_drops, stats.kernel_drops)
        shaped = self.processor.stats()
        sink = self.sink.ledger()
        throttled = self._throttled()
        return Totals(
            seen=stats.events + kernel + throttled, delivered=sink["delivered"],
            filtered=shaped.get("filtered", 0), collapsed=shaped.get("collapsed", 0),
            dropped_kernel=kernel, dropped_processor=stats.processor_drops,
            dropped_buffer=sink["dropped_buffer"], throttled=throttled,
            undelivered=sink["undelivered"] + len(self.pump.arena))


def summary(totals, spooled=False, restored=None):
    """The exit line: every count, and whether they close."""
    t = totals
    line = (f"tapio-collector: {t.seen} events seen, {t.dropped_kernel} dropped in the kernel, "
            f"{t.filtered} filtered, {t.collapsed} collapsed into repeats, {t.delivered} delivered, "
            f"{t.dropped_buffer} dropped from the send buffer, {t.dropped_processor} dropped by "
            f"the processor, {t.throttled} held back by the cgroup budget, {t.undelivered} not "
            f"delivered at exit"
            + (" (kept in the spool)" if spooled and t.undelivered else ""))
    line += ("; the ledger closes" if t.unaccounted == 0
             else f"; {t.unaccounted} events are in no count (a bug: please report it)")
    if restored:
        line += (f"; from an earlier run's spool: {restored['delivered']} delivered, "
                 f"{restored['dropped']} dropped")
    return line
