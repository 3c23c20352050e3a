"""The Merkle tree against RFC 9162's own definitions, and its proofs against tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbi_audit.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    hash_children,
    hash_leaf,
    verify_consistency,
    verify_inclusion,
)


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 §2.1.1 defines it, from the leaf data."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hash_leaf(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hash_children(reference_root(leaves[:k]), reference_root(leaves[k:]))


def data(n: int) -> list[bytes]:
    return [f"event {i}".encode() for i in range(n)]


def tree(n: int) -> MerkleTree:
    return MerkleTree(hash_leaf(d) for d in data(n))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100])
def test_roots_match_the_rfc_definition_at_every_size(n: int) -> None:
    t = tree(n)
    for size in range(n + 1):
        assert t.root(size) == reference_root(data(size))
    assert tree(0).root() == EMPTY_ROOT


def test_rfc9162_example_tree_of_seven() -> None:
    # The seven-leaf tree of RFC 9162 §2.1.5: PATH(0) = [b, h, l], PROOF(3, D[7]) = [c, d, g, l].
    d = data(7)
    t = tree(7)
    a, b, c, dd, e, f, j = (hash_leaf(x) for x in d)
    g, h, i = hash_children(a, b), hash_children(c, dd), hash_children(e, f)
    k = hash_children(g, h)
    l_ = hash_children(i, j)
    assert t.root() == hash_children(k, l_)
    assert t.inclusion_proof(0) == [b, h, l_]
    assert t.inclusion_proof(3) == [c, g, l_]
    assert t.inclusion_proof(4) == [f, j, k]
    assert t.inclusion_proof(6) == [i, k]
    assert t.consistency_proof(3) == [c, dd, g, l_]
    assert t.consistency_proof(4) == [l_]
    assert t.consistency_proof(6) == [i, j, k]


@given(st.integers(1, 300), st.data())
@settings(max_examples=150, deadline=None)
def test_inclusion_proofs_verify_and_tampering_fails(n: int, draw: st.DataObject) -> None:
    t = tree(n)
    size = draw.draw(st.integers(1, n))
    index = draw.draw(st.integers(0, size - 1))
    proof = t.inclusion_proof(index, size)
    root = t.root(size)
    leaf = t.leaf(index)
    assert verify_inclusion(index, size, leaf, proof, root)
    assert not verify_inclusion(index, size, hash_leaf(b"forged"), proof, root)
    if proof:
        bent = list(proof)
        bent[draw.draw(st.integers(0, len(bent) - 1))] = bytes(32)
        assert not verify_inclusion(index, size, leaf, bent, root)
        assert not verify_inclusion(index, size, leaf, proof[:-1], root)
    if size > 1:
        other = (index + 1) % size
        assert not verify_inclusion(other, size, leaf, proof, root) or t.leaf(other) == leaf


@given(st.integers(1, 300), st.data())
@settings(max_examples=150, deadline=None)
def test_consistency_proofs_verify_and_forks_fail(n: int, draw: st.DataObject) -> None:
    t = tree(n)
    second = draw.draw(st.integers(1, n))
    first = draw.draw(st.integers(1, second))
    proof = t.consistency_proof(first, second)
    assert verify_consistency(first, second, t.root(first), t.root(second), proof)
    # A fork: another history of the same first size is not consistent with this one.
    forked = MerkleTree([*(hash_leaf(d) for d in data(first - 1)), hash_leaf(b"another history")])
    assert not verify_consistency(first, second, forked.root(), t.root(second), proof)
    if first < second:
        assert not verify_consistency(first, second, t.root(first), hash_leaf(b"other"), proof)
        assert not verify_consistency(first, second, t.root(first), t.root(second), [])


def test_bad_arguments_are_refused() -> None:
    t = tree(4)
    with pytest.raises(ValueError, match="not in a tree"):
        t.inclusion_proof(4, 4)
    with pytest.raises(ValueError, match="outside"):
        t.root(5)
    with pytest.raises(ValueError, match="32 bytes"):
        t.append(b"short")
    assert not verify_inclusion(5, 4, t.leaf(0), [], t.root())
    assert not verify_consistency(3, 2, t.root(3), t.root(2), [])
    assert verify_consistency(0, 4, EMPTY_ROOT, t.root(), [])
    assert verify_consistency(4, 4, t.root(), t.root(), [])
