"""The entry point of a part that `crmflow up` or a dataflow group starts:
`python -m crmflow.child <verb> ...`, the CLI otherwise.

Ctrl-C in a terminal reaches the whole foreground process group, the parts included. A
part still importing (a second or more) died of it with the import's traceback on the
terminal, while its parent was stopping it anyway. The parent owns Ctrl-C and stops its
parts with SIGTERM, so a part ignores SIGINT from its first line; a verb that handles
signals itself (the dataflow, the API's server) installs its handler later, as before.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)

from crmflow.cli import main  # noqa: E402  (after the signal: the import is what takes time)

if __name__ == "__main__":
    main()
