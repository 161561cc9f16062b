"""Run one fuzz target under atheris (libFuzzer): python -m tests.fuzz.run TARGET [libFuzzer args].

The seed corpus is tests/fuzz/corpus/TARGET; new inputs go to the first corpus directory given
(pass a scratch one first to keep the tree clean). Crashes are written as crash-* files in the
current directory (-artifact_prefix= to move them). Native coverage of the Cython core needs the
instrumented build (TAPIO_ASAN=1 ./build.sh build, see build.sh fuzz).
"""
import sys

import atheris

with atheris.instrument_imports(include=["tapio"]):
    from tests.fuzz.targets import TARGETS
    # the targets import these lazily: instrument them here
    import tapio.collector.connection  # noqa: F401
    import tapio.server.filters  # noqa: F401


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{'|'.join(TARGETS)}}} [libFuzzer args]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
