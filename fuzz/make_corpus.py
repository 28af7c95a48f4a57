#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Each seed is a small, named, hand-designed case in the byte layout its target
decodes (see the comments at the top of fuzz/fuzz_*.cpp and
fuzz/fuzz_common.hpp). Re-running the script rewrites the same files.
"""

import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))

LS = [1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4, 1e6, 1e8]
PS = ["1.01", "1.1", "4/3", "1.5", "2", "3", "10", "100"]


def l_index(l):
    return LS.index(l)


def p_index(p):
    return PS.index(p)


def scale_byte(exponent):
    """The byte whose decoded row scale is 10^exponent, exponent in [-30, 30]."""
    return exponent + 30


# Entry encodings (two bytes each, see decode_value in fuzz_common.hpp).
def grid(value_times_8):
    """scale * value_times_8 / 8, value_times_8 in [-128, 127]."""
    return [0, value_times_8 + 128]


def tie(j, negate=False):
    """A copy of entry j (of the entries decoded so far), negated if asked."""
    return [151 if negate else 150, j]


def ulps(j, steps, up):
    """Entry j moved by `steps` (1..4) ulps."""
    return [184 + (steps - 1) + (4 if up else 0), j]


def zero(negative=False):
    return [197 if negative else 196]


def wide(exponent, negative=False, mantissa_byte=0):
    """(1 + mantissa_byte/256) * 10^exponent, exponent in [-30, 30]."""
    return [206 + (1 if negative else 0), mantissa_byte, exponent + 30]


def subnormal(multiple, negative=False):
    """DBL_TRUE_MIN * (1 + 1000 * multiple)."""
    return [236 + (1 if negative else 0), multiple]


def near_min(multiple, negative=False):
    """DBL_MIN * (1 + multiple)."""
    return [238 + (1 if negative else 0), multiple]


NAN, POS_INF, NEG_INF = [245, 0], [249, 0], [253, 0]


def zero_pair(entry):
    """decode_value reads two bytes; the single-byte encodings get a filler."""
    return entry + [0] * (2 - len(entry)) if len(entry) < 2 else entry


def solvers_case(entries, k, l, p, exponent=0, non_finite=False, batch=False, tail=b"seed"):
    n = len(entries)
    flags = (0 if non_finite else 1) | (8 if batch else 0)
    data = [n - 1, k, l_index(l), p_index(p), scale_byte(exponent), flags]
    for e in entries:
        data += zero_pair(e) if len(e) != 3 else e
    return bytes(data) + tail


def solvers_seeds():
    s = {}
    known = [grid(-40), grid(-16), grid(24), grid(8)]  # [-5, -2, 3, 1]
    for p in PS:
        s[f"known_values_p{p.replace('/', '_')}"] = solvers_case(known, 2, 1e-2, p)
    s["known_values_batch"] = solvers_case(known, 2, 1e-2, "4/3", batch=True)
    s["n1_k0"] = solvers_case([grid(5)], 0, 0.1, "4/3")
    s["n1_k1"] = solvers_case([grid(-5)], 1, 0.1, "2")
    ramp = [grid(v) for v in range(-60, 60, 8)]
    s["ramp_k0"] = solvers_case(ramp, 0, 1.0, "1.5")
    s["ramp_kn"] = solvers_case(ramp, len(ramp), 1.0, "1.5")
    s["ramp_mid_l1e-8"] = solvers_case(ramp, 7, 1e-8, "4/3")
    s["ramp_mid_l1e8"] = solvers_case(ramp, 7, 1e8, "3")
    s["ramp_mid_p1.01"] = solvers_case(ramp, 5, 0.5, "1.01")
    s["ramp_mid_p100"] = solvers_case(ramp, 5, 0.5, "100")
    s["all_equal_p2"] = solvers_case([grid(8)] + [tie(0)] * 9, 3, 0.1, "2")
    s["all_equal_p100"] = solvers_case([grid(8)] + [tie(0)] * 9, 3, 1e-3, "100")
    s["all_zero"] = solvers_case([zero()] * 6 + [zero(True)] * 2, 4, 1.0, "4/3")
    s["heavy_ties"] = solvers_case([grid(8), tie(0), grid(4), tie(2), tie(2), tie(0, True), grid(-4), tie(6)], 3, 0.5, "10")
    s["magnitude_ties_signs"] = solvers_case([grid(16), tie(0, True), tie(0), tie(0, True), grid(2)], 2, 0.1, "1.1")
    s["near_ties_ulps"] = solvers_case([grid(8), ulps(0, 1, True), ulps(0, 2, False), ulps(1, 4, True), grid(0)], 2, 1e-8, "3")
    s["huge_1e30"] = solvers_case([wide(30), wide(29, True), wide(30, False, 128), wide(28)], 2, 1e-8, "4/3")
    s["huge_scale"] = solvers_case(ramp, 4, 1e8, "2", exponent=30)
    s["tiny_1e-30"] = solvers_case([wide(-30), wide(-29, True), wide(-30, False, 128), wide(-28)], 2, 1e-8, "4/3")
    s["tiny_scale"] = solvers_case(ramp, 4, 1e-8, "1.5", exponent=-30)
    s["mixed_magnitudes"] = solvers_case([wide(30), wide(-30), wide(0), wide(15, True), wide(-15), zero()], 3, 1.0, "4/3")
    s["subnormals"] = solvers_case([subnormal(1), subnormal(2, True), near_min(0), near_min(3, True), zero()], 2, 1e-8, "2")
    s["nan_row"] = solvers_case([grid(8), NAN, grid(-3)], 1, 0.1, "4/3", non_finite=True)
    s["pos_inf_row"] = solvers_case([grid(8), POS_INF, grid(-3)], 1, 0.1, "4/3", non_finite=True)
    s["neg_inf_row"] = solvers_case([grid(8), NEG_INF, grid(-3), POS_INF], 2, 0.1, "2", non_finite=True)
    s["long_row_64"] = solvers_case([grid((i * 37) % 200 - 100) for i in range(64)], 20, 0.1, "4/3", batch=True)
    return s


def isotonic_case(entries, l, p, magnitude, w_start=None, w_steps=(), exponent=0, hostile=False):
    n = len(entries)
    flags = (1 if magnitude else 0) | (2 if w_start is not None else 0) | (0x30 if hostile else 0)
    data = [n, l_index(l), p_index(p), scale_byte(exponent), flags]
    for e in entries:
        data += zero_pair(e) if len(e) != 3 else e
    if w_start is not None:
        data.append(w_start)
    steps = list(w_steps) + [0] * (n - len(w_steps))
    return bytes(data + steps)


def isotonic_seeds():
    s = {}
    ramp = [grid(v) for v in range(60, -60, -12)]
    one_step = [0, 0, 160]  # w = (1, 1, 1, 0, 0, ...): a top-k weight vector
    for p in PS:
        s[f"topk_mask_p{p.replace('/', '_')}"] = isotonic_case(ramp, 0.5, p, False, w_steps=one_step)
        s[f"topk_mag_p{p.replace('/', '_')}"] = isotonic_case(ramp, 0.5, p, True, w_steps=one_step)
    s["empty"] = isotonic_case([], 1.0, "2", False)
    s["single"] = isotonic_case([grid(3)], 1.0, "4/3", True)
    s["mask_negative_w"] = isotonic_case(ramp, 1.0, "1.5", False, w_start=8, w_steps=[255, 240, 220, 200, 180])
    s["mag_graded_w"] = isotonic_case(ramp, 0.1, "3", True, w_start=40, w_steps=[230, 230, 250, 0, 255])
    s["ties"] = isotonic_case([grid(8), tie(0), tie(0), grid(0), tie(3)], 1e-3, "100", False, w_steps=[0, 160])
    s["huge"] = isotonic_case([wide(30), wide(29), wide(28), wide(-30)], 1e-8, "4/3", True, w_steps=[160])
    s["tiny"] = isotonic_case([wide(-28), wide(-29), wide(-30)], 1e8, "1.01", False, w_steps=[160])
    s["unsorted"] = isotonic_case([grid(-8), grid(8)], 1.0, "2", False, hostile=True)
    s["non_finite"] = isotonic_case([NAN, grid(8)], 1.0, "2", True, hostile=True)
    return s


def cli_seeds():
    line, p, number, k, args = 0, 1, 2, 3, 4
    seeds = {
        "line_simple": (line, "1 2 3"),
        "line_separators": (line, " ,\t1,,2\t 3,\r"),
        "line_signs": (line, "+1 -2 +0 -0 1e-300 -1.5E+30"),
        "line_nan": (line, "1 nan 2"),
        "line_inf": (line, "inf -inf"),
        "line_overflow": (line, "1e400 2"),
        "line_underflow": (line, "1e-400"),
        "line_hex": (line, "0x1p3"),
        "line_empty": (line, " , "),
        "line_plus_minus": (line, "+-1"),
        "p_fraction": (p, "4/3"),
        "p_decimal": (p, "1.5"),
        "p_divide_by_zero": (p, "1/0"),
        "p_overflow_fraction": (p, "1e300/1e-300"),
        "p_two_slashes": (p, "1/2/3"),
        "p_empty_parts": (p, "/"),
        "number_plain": (number, "3.25"),
        "number_trailing": (number, "3.25x"),
        "number_subnormal": (number, "4.9e-324"),
        "k_plain": (k, "17"),
        "k_negative": (k, "-3"),
        "k_overflow": (k, "99999999999999999999999"),
        "args_mask": (args, "mask\0--k\0" "2\0--l=0.5\0--p\0" "4/3\0--solver=pav"),
        "args_vjp": (args, "mag\0--k=1\0--vjp"),
        "args_help": (args, "--k\0-h"),
        "args_missing_value": (args, "mask\0--k"),
        "args_unknown": (args, "mask\0--k=1\0--q=2"),
        "args_vjp_hard": (args, "hard-mag\0--k=1\0--vjp"),
        "args_bad_l": (args, "mask\0--k=1\0--l=-1"),
        "args_bad_p": (args, "mask\0--k=1\0--p=1/1"),
    }
    return {name: bytes([sel]) + text.encode() for name, (sel, text) in seeds.items()}


def write(target, seeds):
    directory = os.path.join(HERE, "corpus", target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{directory}: {len(seeds)} files")


if __name__ == "__main__":
    write("solvers", solvers_seeds())
    write("isotonic", isotonic_seeds())
    write("cli_parser", cli_seeds())
