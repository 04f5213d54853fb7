"""What every kajax command line shares: absl flags, log verbosity and the error style.

Each CLI module (``kajax.main``, ``kajax.convert_torch``, ``kajax.predict``,
``kajax.build_data``) has a ``define_flags(flag_values)`` function and a ``run(args)``
function, and ends with ``cli.run(define_flags, run)``. So all of them:

* answer ``--help`` (the module docstring and its flags), ``--helpfull`` and
  ``--flagfile=FILE`` the absl way, and report a bad flag value as absl does
  (``FATAL Flags parsing error: ...``, exit status 1);
* log kajax's own status lines at INFO and hide the INFO chatter of libraries (Orbax logs
  every checkpoint step) unless ``--verbosity``/``-v`` is given;
* report bad input found while running — a missing file, a wrong shape, a diverging loss — as
  one line ``error: ...`` on stderr with exit status 1; ``--verbosity=1`` adds the traceback.

Flags are defined by a function rather than at import time so that the modules can be
imported side by side (several define ``--output_dir``) and so that tests can parse a
documented command into a fresh ``flags.FlagValues`` without running it.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable

from absl import app, flags, logging

# Errors that mean "your input is wrong", reported in one line. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError, ImportError)


def _quiet_libraries() -> None:
  if not flags.FLAGS["verbosity"].present:
    from kajax import training_logs  # pylint: disable=import-outside-toplevel
    training_logs.show_status_lines()


def report_errors(fn: Callable[[], Any], user_errors: tuple[type[BaseException], ...]
                  = USER_ERRORS) -> Any:
  """Calls ``fn()``; a user error becomes ``error: ...`` on stderr and exit status 1."""
  try:
    return fn()
  except user_errors as e:
    if logging.get_verbosity() >= 1:  # -v 1: the user asked for details.
      raise
    message = str(e) or type(e).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.exit(1)


def run(define_flags: Callable[[flags.FlagValues], dict[str, Any]],
        main: Callable[[types.SimpleNamespace], Any],
        user_errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
  """Defines the flags, parses the command line with absl and calls ``main(args)``.

  Args:
    define_flags: defines the CLI's flags on the given ``FlagValues``; returns
      ``{name: FlagHolder}``.
    main: receives the parsed values as attributes (``args.output_dir``); its return value
      is the exit status (None = 0).
    user_errors: exception types reported in one line instead of a traceback.
  """
  holders = define_flags(flags.FLAGS)

  def absl_main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])} (flags are written "
                           "--name=value).")
    _quiet_libraries()
    args = types.SimpleNamespace(**{k: h.value for k, h in holders.items()})
    return report_errors(lambda: main(args), user_errors)

  app.run(absl_main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing and usage errors, plus one line for an unknown ``--config.FIELD``.

  ml_collections raises AttributeError/KeyError (with a traceback) when an override names a
  field the config does not have; it is a flag error like any other.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    detail = e
    while isinstance(detail, BaseException) and detail.args:  # KeyError inside AttributeError
      detail = detail.args[0]
    detail = " ".join(str(detail).split())
    sys.stderr.write("FATAL Flags parsing error: a --config.FIELD override names a field "
                     f"the config does not have: {detail}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


class ImageSizeParser(flags.ArgumentParser):
  """absl parser of an ``HxW`` flag: '240x320' -> (240, 320), at least 32 per side."""

  def __init__(self, minimum: int = 32):
    self.minimum = minimum

  def parse(self, argument: Any) -> tuple[int, int]:
    if isinstance(argument, tuple):
      return argument
    try:
      h, w = (int(v) for v in str(argument).lower().split("x"))
    except ValueError:
      raise ValueError("must look like HxW, e.g. 240x320") from None
    if h < self.minimum or w < self.minimum:
      raise ValueError(f"SegNet needs at least {self.minimum}x{self.minimum} (five 2x2 "
                       "poolings)")
    return h, w

  def flag_type(self) -> str:
    return "HxW"
