#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz_parsers.rs: the hostile inputs of the fuzz findings
(../shared/reliability/FUZZ-FINDINGS.md, D1-D16) that are parser inputs, plus well-formed
files of every accepted kind for the mutations to start from. Pure standard library (no
numpy), deterministic. Run from the repository root: python3 tests/fuzz/make_corpus.py"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def npy(header, data=b"", version=1):
    h = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    if version == 1:
        pre = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h))
    else:
        pre = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(h))
    return pre + h.encode() + data


def f8(vals, fmt="<"):
    return struct.pack(fmt + "%dd" % len(vals), *vals)


def f4(vals, fmt="<"):
    return struct.pack(fmt + "%df" % len(vals), *vals)


def dictof(descr, shape, fortran=False, q="'"):
    return "{%sdescr%s: %s%s%s, %sfortran_order%s: %s, %sshape%s: %s, }" % (
        q, q, q, descr, q, q, q, "True" if fortran else "False", q, q, shape)


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {}
    vals = [float(i) - 2.5 for i in range(12)]
    # well-formed seeds
    files["valid_c_f8_4x3.npy"] = npy(dictof("<f8", "(4, 3)"), f8(vals))
    files["valid_f_f8_4x3.npy"] = npy(dictof("<f8", "(4, 3)", True), f8(vals))
    files["valid_c_f4_be_3x4.npy"] = npy(dictof(">f4", "(3, 4)"), f4(vals, ">"))
    files["valid_1d_f8.npy"] = npy(dictof("<f8", "(12,)"), f8(vals))
    files["valid_3d_c_f8.npy"] = npy(dictof("<f8", "(2, 3, 2)"), f8(vals))
    files["valid_3d_f_f4.npy"] = npy(dictof("<f4", "(2, 3, 2)", True), f4(vals))
    files["valid_v2.npy"] = npy(dictof("<f8", "(3, 4)"), f8(vals), version=2)
    files["valid_v3.npy"] = npy(dictof("<f8", "(3, 4)"), f8(vals), version=3)
    # D16: double-quoted keys (numpy and ast.literal_eval accept them)
    files["d16_double_quoted_keys.npy"] = npy(dictof("<f8", "(4, 3)", q='"'), f8(vals))
    # D1: duplicate 'shape' whose last value wraps 3·X to n in u64
    n = 1001
    x = (2**64 + n) // 3
    files["d1_dupkey_wrap_1001.npy"] = npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (%d,), 'shape': (3, %d), }" % (n, x),
        f8([1.5] * n))
    # D3: duplicate shape (1,) then (2^40, 2^40); list shape with a decoy tuple
    files["d3_dupkey_2p40.npy"] = npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'shape': (1099511627776, 1099511627776), }",
        f8([1.0]))
    files["d3_listshape_decoy.npy"] = npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': [3, 6148914691236517206], 'decoy': (2,), }",
        f8([1.0, 2.0]))
    files["d3_dupkey_wrap2_col.npy"] = npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'shape': (2, %d), }" % (2**63 + 1),
        f8([1.0, 2.0]))
    files["d3_dupkey_3d_wrap.npy"] = npy(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), 'shape': (%d, 2, 1), }" % (2**63 + 1),
        f8([1.0, 2.0]))
    # D4: a 128-byte header of shape (2^40, 1, 0) and no data
    files["d4_batch_2p40_empty.npy"] = npy(dictof("<f8", "(1099511627776, 1, 0)"))
    files["d4_huge_2d.npy"] = npy(dictof("<f8", "(4294967296, 4294967296)"), f8([0.0] * 8))
    # D16: 1- and 2-byte dtypes with correctly sized data
    files["d16_f2.npy"] = npy(dictof("<f2", "(10,)"), b"\x00\x3c" * 10)
    files["d16_u1.npy"] = npy(dictof("|u1", "(10,)"), bytes(range(10)))
    files["d16_b1.npy"] = npy(dictof("|b1", "(10,)"), b"\x01" * 10)
    # worked before, kept as seeds: nesting, versions, truncation
    deep = "{'descr': '<f8', 'fortran_order': False, 'shape': %s%s}" % ("(" * 3000, ")" * 3000)
    files["deep_nesting.npy"] = npy(deep, version=2)
    files["version4.npy"] = b"\x93NUMPY\x04\x00" + npy(dictof("<f8", "(1,)"), f8([1.0]))[8:]
    files["truncated_header.npy"] = npy(dictof("<f8", "(4, 3)"))[:40]
    files["short_data.npy"] = npy(dictof("<f8", "(4, 3)"), f8(vals[:11]))
    files["negative_dim.npy"] = npy(dictof("<f8", "(-1, 3)"), f8(vals))
    files["structured.npy"] = npy("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,), }", f8([1, 2]))
    # CSV (D7, D16)
    files["d7_bom.csv"] = b"\xef\xbb\xbf1,2\n3,4\n5,7\n"
    files["d7_bad_first_cell.csv"] = b"1,x\n3,4\n5,6\n"
    files["d7_trailing_comma_first.csv"] = b"1,2,\n3,4\n"
    files["d7_hex_first.csv"] = b"0x1,2\n3,4\n"
    files["d16_cr_only.csv"] = b"1,2\r3,4\r5,6\r"
    files["header.csv"] = b"a,b,c\n1,2,3\n4,5,6\n"
    files["crlf_comments.csv"] = b"# c\r\n1.5, -2e-3 ,inf\r\n\r\n4,5,nan\r\n"
    files["ragged.csv"] = b"1,2\n3\n"
    files["wide_line.csv"] = (",".join(["1.5"] * 2000) + "\n").encode()
    files["not_utf8.csv"] = b"1,2\n\xff\xfe,3\n"
    for name, data in sorted(files.items()):
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print("wrote %d files to %s" % (len(files), OUT))


if __name__ == "__main__":
    main()
