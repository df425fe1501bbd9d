"""A checker of trtexec's command line as TensorRT 10.3's trtexec reads it (a test tool: never imported by the
package). It reads a bash script the way bash splits words, finds the trtexec calls in it, and runs each call's
arguments through the rules of trtexec's option parser, refusing what trtexec refuses, with trtexec's message.

Source (the rules below are transcribed from it, not its code): NVIDIA/TensorRT, branch ``release/10.3`` (commit
5b990f0a739d), ``samples/common/sampleOptions.cpp`` and ``sampleOptions.h``, ``samples/common/sampleUtils.cpp``
(``splitToStringVec``) and ``samples/trtexec/trtexec.cpp`` (``main``):

- ``argsToArgumentsMap``: each argv word after the program is one option; its key is the text up to the first
  ``=``, its value the rest (``""`` without ``=``), and it remembers its argv position. The map is an
  ``unordered_multimap`` (``Arguments`` in sampleOptions.h), so a key may occur several times. A value is never
  taken from the next word: ``--onnx model.onnx`` is the option ``--onnx`` with an empty value plus an unknown
  option ``model.onnx``.
- ``main``: ``--help``/``-h`` (``parseHelp``) or no argument at all print the help and build nothing.
  ``AllOptions::parse`` (``ModelOptions``, ``BuildOptions``, ``SystemOptions``, ``InferenceOptions``,
  ``ReportingOptions``) takes each option it knows with ``getAndDelOption``, which removes ONE occurrence; the
  plugin options (``--plugins``, ``--staticPlugins``, ``--setPluginsToSerialize``, ``--dynamicPlugins``) are read
  in a loop and may repeat. Whatever is left is refused, ``Unknown option: KEY VALUE``: an unknown flag, or a
  second occurrence of a flag that is read once. ``KNOWN`` below is the set of keys those parse functions read.
- Switches are read as ``bool``, and ``stringToValue<bool>`` is true whatever the value; integers go through
  ``std::stoi``, reals through ``std::stof``; other options keep their text (some checked against fixed words).
- ``BuildOptions::parse`` + ``getOptimizationProfiles``: each ``--profile=N`` starts profile N; the shape flags
  read into it are those at the argv positions directly after it, at most three, one each of ``--minShapes``,
  ``--optShapes``, ``--maxShapes`` in any order (``getAndDelOptionBehind`` matches position ``pos + 1`` and the
  loop advances ``pos``). A repeated index: "Optimization profile index cannot be the same."; indices must run
  0..K without a gap and every profile must have shapes: "Found invalid or missing shape spec at profile index
  N. ". Without any ``--profile`` one ``--minShapes``/``--optShapes``/``--maxShapes`` each form the one profile
  (``getShapesBuild``). In both cases a shape flag left over after that is refused: "Multiple
  --minShapes/--optShapes/--maxShapes without --profile are not allowed. " (so the pre-``--profile`` form that
  repeats the three flags per profile is refused). ``processShapes``: a group missing some of min/opt/max copies
  them from the others (with a warning).
- Shape spec (``getShapesBuild``, ``splitNameAndValue``, ``removeSingleQuotationMarks``,
  ``stringToValue<std::vector<int32_t>>``, help of ``--minShapes``): ``name:dims`` entries separated by ``,``;
  a name may be wrapped in single quotes (``'Input:0':1x3``; exactly two quotes), otherwise the name is all
  before the LAST ``:``; dims are integers joined by ``x``, or ``scalar`` / nothing for a 0-d tensor; a name may
  hold at most one ``*`` wildcard. A dim that is no integer fails ``std::stoi``: trtexec adds " conversion
  failure: failed to parse minShapes/optShapes/maxShapes. Please double check your input string.".
- ``--memPoolSize`` (``BuildOptions::parse``, ``getUnitMultiplier``, ``addDefaultUnitSuffixIfNotSpecified``):
  ``pool:size`` entries separated by ``,``; pool one of workspace, dlaSRAM, dlaLocalDRAM, dlaGlobalDRAM,
  tacticSharedMem ("Unknown memory pool: X"); size a decimal number with an optional base-2 unit B/K/M/G (any
  case, MiB when none: "invalid unit specifier" otherwise), not negative.
- Also from ``BuildOptions::parse``/``InferenceOptions::parse``: ``--loadEngine`` with ``--saveEngine`` is
  refused; ``--stronglyTyped`` switches ``--fp16``/``--bf16``/``--int8``/``--fp8``/``--int4`` off with a warning;
  ``--fp8`` with ``--int8`` is refused; the fixed words of ``--sparsity``, ``--precisionConstraints``,
  ``--profilingVerbosity``, ``--runtimePlatform``, ``--hardwareCompatibilityLevel``, ``--useRuntime``,
  ``--allocationStrategy``; ``AllOptions::parse``: no ``--onnx`` and no ``--loadEngine``: "Model missing or
  format not recognized".

Stricter than trtexec, where trtexec would go on with a value that cannot be what was meant: a valued option
needs a non-empty value; integers, reals, dims and pool sizes must be whole numbers (``stoi``/``stod`` accept
a number followed by junk); a shape entry needs its ``:``; a shape flag must name a tensor, and the same tensor
once; a tensor named in one of a group's flags must be named in the group's other flags (trtexec would give it
an empty shape there). Warnings (what trtexec logs and goes on) are collected in ``TrtexecCall.warnings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "NVIDIA/TensorRT release/10.3, samples/common/sampleOptions.cpp"

# ---------------------------------------------------------------------------------------------------------------
# the options trtexec 10.3 reads (the keys of AllOptions::parse's parse functions and parseHelp), by kind

SWITCHES = frozenset("""
    --noTF32 --fp16 --bf16 --int8 --fp8 --int4 --stronglyTyped --best --refit --weightless --stripWeights
    --stripAllWeights --vc --versionCompatible --pi --pluginInstanceNorm --excludeLeanRuntime --noCompilationCache
    --safe --buildDLAStandalone --allowGPUFallback --consistency --restricted --skipInference --directIO
    --getPlanVersionOnly --noBuilderCache --errorOnTimingCacheMiss --ignoreParsedPluginLibs --exposeDMA
    --noDataTransfers --useManagedMemory --useSpinWait --threads --useCudaGraph --separateProfileRun
    --timeDeserialize --timeRefit --allowWeightStreaming --verbose --dumpRefit --dumpOutput --dumpRawBindingsToFile
    --dumpProfile --dumpLayerInfo --dumpOptimizationProfile
""".split())
INTEGERS = frozenset("""
    --calibProfile --avgTiming --builderOptimizationLevel --maxAuxStreams --device --useDLACore --streams
    --infStreams --iterations --useProfile --avgRuns
""".split())
REALS = frozenset("--duration --warmUp --sleepTime --idleTime --persistentCacheRatio".split())
WORDS = {  # options whose value is one of fixed words (lower-cased where trtexec lower-cases)
    "--sparsity": ("disable", "enable", "force"),
    "--precisionConstraints": ("obey", "prefer", "none"),
    "--profilingVerbosity": ("layer_names_only", "detailed", "none", "default", "verbose"),
    "--runtimePlatform": ("SameAsBuild", "WindowsAMD64"),
    "--hardwareCompatibilityLevel": ("none", "ampere+"),
    "--useRuntime": ("full", "dispatch", "lean"),
    "--allocationStrategy": ("static", "profile", "runtime"),
}
TEXTS = frozenset("""
    --onnx --saveEngine --loadEngine --timingCacheFile --inputIOFormats --outputIOFormats --calib --layerPrecisions
    --layerOutputTypes --layerDeviceTypes --markDebug --tacticSources --preview --tempdir --tempfileControls
    --leanDLLPath --plugins --staticPlugins --setPluginsToSerialize --dynamicPlugins --loadInputs --shapes
    --weightStreamingBudget --saveDebugTensors --exportTimes --exportOutput --exportProfile --exportLayerInfo
    --percentile
""".split())
SHAPE_FLAGS = ("--minShapes", "--optShapes", "--maxShapes")
CALIB_SHAPE_FLAGS = ("--minShapesCalib", "--optShapesCalib", "--maxShapesCalib")
REPEATABLE = frozenset("--plugins --staticPlugins --setPluginsToSerialize --dynamicPlugins".split())
HELP = ("--help", "-h")
KNOWN = (SWITCHES | INTEGERS | REALS | frozenset(WORDS) | TEXTS | frozenset(SHAPE_FLAGS) | frozenset(CALIB_SHAPE_FLAGS)
         | {"--profile", "--memPoolSize", *HELP})

MEMORY_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")
UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MULTIPLE_SHAPES = "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed."
_SELECTORS = {"--minShapes": "min", "--optShapes": "opt", "--maxShapes": "max"}


class TrtexecError(ValueError):
    """What trtexec (or the shell) would refuse, in one line."""


@dataclass
class TrtexecCall:
    """One trtexec call of a script, as trtexec 10.3 reads it."""

    line: int                  # the script line the call starts on
    argv: list[str]            # the words after the program
    options: dict[str, str]    # every option but the shape flags and --profile: key -> value ("" for none)
    profiles: list[dict[str, dict[str, list[int]]]]  # by index: tensor -> {"min", "opt", "max"} dims
    memory_pools: dict[str, float] = field(default_factory=dict)  # pool -> bytes
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# the shell side: bash's word splitting for what a generated script holds


@dataclass
class _Word:
    text: str
    expanded: bool  # holds a $ or ` expansion outside single quotes (its value is not in the text)


@dataclass
class _Command:
    line: int
    words: list[_Word]
    redirected: bool = False  # holds < > ( ) outside quotes


def _expansion_end(s: str, i: int) -> int:
    """The index after the expansion starting at ``s[i]`` (``$NAME``, ``${...}``, ``$(...)``, a backquoted
    command, ``$`` + one special character); ``i + 1`` for a ``$`` that starts none (bash keeps it literal)."""
    if s[i] == "`":
        j = i + 1
        while j < len(s) and s[j] != "`":
            j += 2 if s[j] == "\\" else 1
        if j >= len(s):
            raise TrtexecError("unterminated ` command substitution")
        return j + 1
    nxt = s[i + 1:i + 2]
    if nxt in ("(", "{"):
        close, depth, j = {"(": ")", "{": "}"}[nxt], 1, i + 2
        while j < len(s) and depth:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c in "'\"":  # a quoted part inside: skipped whole
                end = s.find(c, j + 1)
                if end < 0:
                    raise TrtexecError(f"unterminated {c} inside ${nxt}")
                j = end + 1
                continue
            depth += (c == nxt) - (c == close)
            j += 1
        if depth:
            raise TrtexecError(f"unterminated ${nxt}")
        return j
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]", s[i + 1:])
    return i + 1 + (m.end() if m else 0)


def shell_commands(text: str) -> list[_Command]:
    """The simple commands of a script, each as bash splits it into words: comments dropped, backslash-newline
    joined, quotes removed (single quotes literal; in double quotes ``\\`` escapes ``$ ` " \\`` and newline),
    ``;``, ``&``, ``|`` and newline ending a command. Expansions are kept as written and marked."""
    commands: list[_Command] = []
    words: list[_Word] = []
    cur: list[str] = []
    in_word = expanded = redirected = False
    line = start = 1
    i = 0

    def end_word():
        nonlocal cur, in_word, expanded
        if in_word:
            words.append(_Word("".join(cur), expanded))
        cur, in_word, expanded = [], False, False

    def end_command():
        nonlocal words, redirected
        end_word()
        if words:
            commands.append(_Command(start, words, redirected))
        words, redirected = [], False

    while i < len(text):
        c = text[i]
        if not words and not in_word:
            start = line
        if c == "\\":
            if text[i + 1:i + 2] == "\n":  # line continuation
                line, i = line + 1, i + 2
                continue
            cur.append(text[i + 1:i + 2])
            in_word, i = True, i + 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise TrtexecError(f"line {line}: unterminated single quote")
            cur.append(text[i + 1:end])
            line += text.count("\n", i, end)
            in_word, i = True, end + 1
        elif c == '"':
            in_word, i = True, i + 1
            while i < len(text) and text[i] != '"':
                d = text[i]
                if d == "\\" and text[i + 1:i + 2] in ("$", "`", '"', "\\", "\n"):
                    if text[i + 1] == "\n":
                        line += 1
                    else:
                        cur.append(text[i + 1])
                    i += 2
                elif d in "$`":
                    end = _expansion_end(text, i)
                    expanded |= end > i + 1
                    line += text.count("\n", i, end)
                    cur.append(text[i:end])
                    i = end
                else:
                    line += d == "\n"
                    cur.append(d)
                    i += 1
            if i >= len(text):
                raise TrtexecError(f"line {line}: unterminated double quote")
            i += 1
        elif c in "$`":
            end = _expansion_end(text, i)
            expanded |= end > i + 1
            line += text.count("\n", i, end)
            cur.append(text[i:end])
            in_word, i = True, end
        elif c == "#" and not in_word:
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif c in " \t":
            end_word()
            i += 1
        elif c in "\n;&|":
            end_command()
            line += c == "\n"
            i += 1
        elif c in "<>()":
            end_word()
            redirected, i = True, i + 1
        else:
            cur.append(c)
            in_word, i = True, i + 1
    end_command()
    return commands


_PROGRAM_VARIABLES = ("$TRTEXEC", "${TRTEXEC}")


def _is_trtexec(w: _Word) -> bool:
    return w.text in _PROGRAM_VARIABLES if w.expanded else w.text.rsplit("/", 1)[-1] == "trtexec"


def check_script(text: str) -> list[TrtexecCall]:
    """Every trtexec call of a bash script, each checked (``TrtexecError`` for the first thing trtexec or the
    shell would refuse). A call is a command whose program is ``"$TRTEXEC"`` (which the script must set before)
    or a path ending in ``trtexec``."""
    calls, assigned = [], False
    for cmd in shell_commands(text):
        first = cmd.words[0]
        if first.text.startswith("TRTEXEC="):  # an assignment (its value may be an expansion)
            assigned = True
        if not _is_trtexec(first):
            continue
        if first.expanded and not assigned:
            raise TrtexecError(f"line {cmd.line}: {first.text} is used before the script sets TRTEXEC")
        if cmd.redirected:
            raise TrtexecError(f"line {cmd.line}: the trtexec call holds a redirection or subshell (< > ( ))")
        for w in cmd.words[1:]:
            if w.expanded:
                raise TrtexecError(f"line {cmd.line}: argument {w.text!r} holds a shell expansion whose value "
                                   "this check cannot see")
        try:
            calls.append(parse_args([w.text for w in cmd.words[1:]], cmd.line))
        except TrtexecError as exc:
            raise TrtexecError(f"line {cmd.line}: {exc}") from None
    return calls


def check_script_file(path: Path) -> list[TrtexecCall]:
    return check_script(Path(path).read_text())


# ---------------------------------------------------------------------------------------------------------------
# trtexec's side: AllOptions::parse over the argument map


@dataclass
class _Arg:
    key: str
    value: str
    pos: int  # argv index (the program is 0)
    taken: bool = False


class _Args:
    def __init__(self, argv: list[str]) -> None:
        self.items = [_Arg(*(a.split("=", 1) if "=" in a else (a, "")), pos=i) for i, a in enumerate(argv, 1)]

    def has(self, key: str) -> bool:
        return any(a.key == key and not a.taken for a in self.items)

    def take(self, key: str) -> _Arg | None:
        """getAndDelOption: one occurrence (the first here: trtexec's multimap picks any)."""
        for a in self.items:
            if a.key == key and not a.taken:
                a.taken = True
                return a
        return None

    def take_at(self, key: str, pos: int) -> _Arg | None:
        """getAndDelOptionBehind: the occurrence at exactly ``pos``."""
        for a in self.items:
            if a.key == key and a.pos == pos and not a.taken:
                a.taken = True
                return a
        return None

    def left(self) -> list[_Arg]:
        return [a for a in self.items if not a.taken]


def _integer(key: str, value: str, minimum: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise TrtexecError(f"{key}={value}: not an integer (trtexec reads it with std::stoi)")
    n = int(value)
    if minimum is not None and n < minimum:
        raise TrtexecError(f"{key}={value}: must be at least {minimum}")
    return n


def shape_spec(key: str, value: str) -> dict[str, list[int]]:
    """``--minShapes`` & co.: tensor name -> dims (``[]`` for a 0-d tensor)."""
    if not value:
        raise TrtexecError(f"{key}: names no tensor")
    out: dict[str, list[int]] = {}
    for entry in value.split(","):
        if not entry:
            raise TrtexecError(f"{key}={value}: empty entry between commas")
        quotes = entry.count("'")
        if quotes:
            if quotes != 2:
                raise TrtexecError(f"Found invalid number of 's when parsing {entry}. Expected: 2, received: "
                                   f"{quotes}.")
            before, quoted, after = entry.split("'")
            if not after.startswith(":"):
                raise TrtexecError(f"{key}: {entry!r}: the quoted name must be followed by ':'")
            name, dims = before + quoted, after[1:]
        elif ":" not in entry:
            raise TrtexecError(f"{key}: {entry!r} has no ':' between the tensor name and its dims")
        else:
            name, dims = entry.rsplit(":", 1)
        if not name:
            raise TrtexecError(f"{key}: {entry!r} has an empty tensor name")
        if name.count("*") > 1:
            raise TrtexecError(f"{key}: {name!r}: a name may hold at most one wildcard ('*')")
        if name in out:
            raise TrtexecError(f"{key}: names tensor {name!r} twice")
        parts = [] if dims in ("", "scalar") else dims.split("x")
        for d in parts:
            if not re.fullmatch(r"[0-9]+", d):
                raise TrtexecError(f"{key}: {entry!r}: dim {d!r} is not a non-negative integer; conversion failure: "
                                   "failed to parse minShapes/optShapes/maxShapes. Please double check your input "
                                   "string.")
        out[name] = [int(d) for d in parts]
    return out


def _profile(group: dict[str, dict[str, list[int]]], where: str, warnings: list[str]) -> dict:
    """processShapes: the missing selectors of a group copied from the given ones; tensor -> {min, opt, max}."""
    given = {s for s in ("min", "opt", "max") if s in group}
    if not given:
        return {}
    names = set().union(*(group[s] for s in given))
    for s in sorted(given):
        missing = sorted(names - set(group[s]))
        if missing:
            raise TrtexecError(f"{where}: tensor {missing[0]!r} has no --{s}Shapes entry (trtexec would give it an "
                               "empty shape there)")
    src = {"min": "min", "opt": "opt", "max": "max"}
    if "min" not in given:
        src["min"] = "opt" if "opt" in given else "max"
    if "opt" not in given:
        src["opt"] = "max" if "max" in given else src["min"]
    if "max" not in given:
        src["max"] = src["opt"] if "opt" in given else src["min"]
    for s in ("min", "opt", "max"):
        if s not in given:
            warnings.append(f"{where}: {src[s]}Shapes is being broadcasted to {s}Shapes")
    return {n: {s: list(group[src[s]][n]) for s in ("min", "opt", "max")} for n in sorted(names)}


def _profiles(args: _Args, warnings: list[str]) -> list[dict]:
    """getOptimizationProfiles, or getShapesBuild without --profile, then the leftover check."""
    by_index: dict[int, dict] = {}
    while (p := args.take("--profile")) is not None:
        index = _integer("--profile", p.value, minimum=0)
        group: dict[str, dict[str, list[int]]] = {}
        pos = p.pos
        for _ in range(3):
            for key in ("--minShapes", "--maxShapes", "--optShapes"):
                if _SELECTORS[key] not in group and (a := args.take_at(key, pos + 1)) is not None:
                    group[_SELECTORS[key]] = shape_spec(key, a.value)
                    break
            else:
                break
            pos += 1
        profile = _profile(group, f"profile {index}", warnings)
        if by_index.get(index):
            raise TrtexecError("Optimization profile index cannot be the same.")
        by_index[index] = profile
    if by_index:
        profiles = [by_index.get(i, {}) for i in range(max(by_index) + 1)]
        for i, profile in enumerate(profiles):
            if not profile:
                raise TrtexecError(f"Found invalid or missing shape spec at profile index {i}.")
    else:
        group = {_SELECTORS[k]: shape_spec(k, a.value) for k in SHAPE_FLAGS if (a := args.take(k)) is not None}
        profiles = [_profile(group, "profile 0", warnings)]
    if any(args.has(k) for k in SHAPE_FLAGS):
        raise TrtexecError(MULTIPLE_SHAPES)
    return profiles


def memory_pools(value: str) -> dict[str, float]:
    """``--memPoolSize``: pool -> bytes."""
    out: dict[str, float] = {}
    for entry in value.split(",") if value else []:
        name, size = entry.rsplit(":", 1) if ":" in entry else (entry, entry)
        if not size:
            raise TrtexecError(f"--memPoolSize: {entry!r} has no size")
        if size[-1].isdigit():
            size += "M"  # addDefaultUnitSuffixIfNotSpecified: MiB
        unit = size[-1].upper()
        if unit not in UNITS:
            raise TrtexecError(f'Error parsing "{size}": invalid unit specifier \'{unit}\'. Valid base-2 unit '
                               "suffixes include: B (Bytes), G (Gibibytes), K (Kibibytes), M (Mebibytes).")
        number = size[:-1]
        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", number):
            raise TrtexecError(f"--memPoolSize: {entry!r}: {number!r} is not a number; conversion failure: failed to "
                               "parse --memPoolSize. Please double check your input string.")
        n = float(number) * UNITS[unit]
        if n < 0:
            raise TrtexecError(f"Negative memory pool size: {n}")
        if not name:
            raise TrtexecError(f"--memPoolSize: {entry!r} names no pool (trtexec would ignore it)")
        if name not in MEMORY_POOLS:
            raise TrtexecError(f"Unknown memory pool: {name}")
        out[name] = n
    return out


def parse_args(argv: list[str], line: int = 0) -> TrtexecCall:
    """trtexec 10.3's reading of ``argv`` (the words after the program)."""
    if not argv:
        raise TrtexecError("no arguments: trtexec prints its help and builds nothing")
    args = _Args(argv)
    if any(args.has(k) for k in HELP):
        raise TrtexecError("--help/-h: trtexec prints its help and builds nothing")
    warnings: list[str] = []
    profiles = _profiles(args, warnings)
    calib = {k: shape_spec(k, a.value) for k in CALIB_SHAPE_FLAGS if (a := args.take(k)) is not None}
    if calib and len(calib) != 3 and set(calib) != {"--optShapesCalib"}:
        raise TrtexecError("Must specify only --optShapesCalib or all of --minShapesCalib, --optShapesCalib, "
                           "--maxShapesCalib")
    pools_arg = args.take("--memPoolSize")
    pools = memory_pools(pools_arg.value) if pools_arg else {}
    options: dict[str, str] = {"--memPoolSize": pools_arg.value} if pools_arg else {}
    for key in sorted(KNOWN - {"--profile", "--memPoolSize", *SHAPE_FLAGS, *CALIB_SHAPE_FLAGS}):
        while (a := args.take(key)) is not None:
            if key in SWITCHES:
                if a.value:
                    warnings.append(f"{key}={a.value}: a switch; trtexec ignores the value")
            elif not a.value:
                raise TrtexecError(f"{key} needs a value, written {key}=VALUE (trtexec never reads the next word)")
            elif key in INTEGERS:
                _integer(key, a.value)
            elif key in REALS and not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)", a.value):
                raise TrtexecError(f"{key}={a.value}: not a number (trtexec reads it with std::stof)")
            elif key in WORDS:
                value = a.value.lower() if key == "--hardwareCompatibilityLevel" else a.value
                if value not in WORDS[key]:
                    raise TrtexecError(f"{key}={a.value}: not one of {', '.join(WORDS[key])}")
            options[key] = a.value
            if key not in REPEATABLE:
                break
    left = args.left()
    if left:
        raise TrtexecError("; ".join(f"Unknown option: {a.key} {a.value}".rstrip() for a in left))
    if "--loadEngine" in options and "--saveEngine" in options:
        raise TrtexecError("Incompatible load and save engine options selected")
    if "--stronglyTyped" in options:
        for flag in ("--fp16", "--bf16", "--int8", "--fp8", "--int4"):
            if flag in options:
                warnings.append(f"Invalid usage, setting {flag[2:]} mode is not allowed if graph is strongly typed "
                                f"(trtexec switches {flag} off)")
    elif "--fp8" in options and ("--int8" in options or "--best" in options):
        raise TrtexecError("Invalid usage, fp8 and int8 aren't allowed to be enabled together.")
    if "--onnx" not in options and "--loadEngine" not in options:
        raise TrtexecError("Model missing or format not recognized")
    return TrtexecCall(line, list(argv), options, profiles, pools, warnings)
