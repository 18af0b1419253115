"""Ctrl+C or SIGTERM while a script is still starting (importing pandas and the rest): one line and exit 1.

Every script imports this module first. Until cli.run takes over (hand_over), an interrupt ends the process at
once: nothing has been read or written yet, so nothing is lost, and the user sees one line rather than a
traceback of the import that was running. Imported as a library (tests, bench/), it changes nothing.
"""
import os
import signal
import sys

EARLY_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _leave(signal_number, _frame):
    """Print the one line and exit 1 without running any cleanup (there is nothing to clean up yet)."""
    script = os.path.basename(sys.argv[0] or "stock-etl")
    os.write(2, f"error: {script}: interrupted while starting ({signal.Signals(signal_number).name}); "
                "nothing was done\n".encode())
    os._exit(1)


def _started_as_script():
    """Is the running program one of the project's scripts (python load_transactions.py ...)?"""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    here = os.path.dirname(os.path.abspath(__file__))
    return main_file is not None and os.path.dirname(os.path.abspath(main_file)) == here


def hand_over():
    """Give Ctrl+C back to Python (KeyboardInterrupt, which cli.run turns into its one line); SIGTERM is
    cli.run's to set."""
    if signal.getsignal(signal.SIGINT) is _leave:
        signal.signal(signal.SIGINT, signal.default_int_handler)


if _started_as_script():
    for early_signal in EARLY_SIGNALS:
        signal.signal(early_signal, _leave)
