"""The compiled BPF object against the loader's table: a program the table does not list would
never be loaded (silently), a listed one missing from the object is a stale entry, and every
event type must come from some program. Reads the object with libbpf; loads nothing."""
from tapio import vocab
from tapio._fast import kernel


def test_every_program_in_the_object_is_in_the_loaders_table():
    programs = kernel.object_programs()
    assert programs, f"no programs in {kernel.DEFAULT_OBJECT}"
    table = kernel.program_types()
    unlisted = sorted(set(programs) - set(table))
    assert unlisted == [], (
        f"programs in {kernel.DEFAULT_OBJECT} that tapio/_fast/kernel.pyx's _PROGRAM_TYPES does "
        f"not list, so they are never loaded: {unlisted}")
    stale = sorted(set(table) - set(programs))
    assert stale == [], f"_PROGRAM_TYPES lists programs the object does not have: {stale}"


def test_every_event_type_comes_from_a_program():
    produced = set().union(*kernel.program_types().values())
    assert produced == set(kernel.EVENT_TYPES)
    # the loader knows every type of the wire contract but those the collector makes itself, by
    # its public name and number
    assert kernel.EVENT_TYPES == {name: number for number, name in vocab.EVENT_TYPES.items()
                                  if number and name not in vocab.COLLECTOR_EVENT_TYPES}
