"""Products A B^T of two row-major blocks, in 4 x 4 register tiles.

The statistics of a block are sums over its rows of products, sum_i A[a, i] B[b, i]: the
weighted scatter of each component ('full', 'tied') and the expanded kernel's R Phi^T. The
shapes are small in one dimension (d or K rows against nb = 256 columns), where BLAS spends as
much time packing its operands as multiplying; sixteen running sums per step of i, each load
feeding four multiply-adds, measured about 2x a BLAS product at d = 16 and 64.
"""

from numba import njit

from ._config import JIT, prefer_wide_vectors


@njit(**JIT)
def tile_products(A, B, nb, out, upper, add):
    """out[a, b] = (or += if `add`) sum_{i < nb} A[a, i] * B[b, i].

    A and B have a multiple of 4 rows (zero past the real ones); only entries inside `out`'s
    shape are written. With `upper`, only the tiles on or above the diagonal are computed (a
    symmetric product: the caller mirrors them), half the work of a full product.
    """
    prefer_wide_vectors()
    for a0 in range(0, A.shape[0], 4):
        for b0 in range(a0 if upper else 0, B.shape[0], 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
            for i in range(nb):
                w0, w1, w2, w3 = A[a0, i], A[a0 + 1, i], A[a0 + 2, i], A[a0 + 3, i]
                x0, x1, x2, x3 = B[b0, i], B[b0 + 1, i], B[b0 + 2, i], B[b0 + 3, i]
                s00 += w0 * x0
                s01 += w0 * x1
                s02 += w0 * x2
                s03 += w0 * x3
                s10 += w1 * x0
                s11 += w1 * x1
                s12 += w1 * x2
                s13 += w1 * x3
                s20 += w2 * x0
                s21 += w2 * x1
                s22 += w2 * x2
                s23 += w2 * x3
                s30 += w3 * x0
                s31 += w3 * x1
                s32 += w3 * x2
                s33 += w3 * x3
            tile = ((s00, s01, s02, s03), (s10, s11, s12, s13),
                    (s20, s21, s22, s23), (s30, s31, s32, s33))
            for u in range(4):
                for v in range(4):
                    a, b = a0 + u, b0 + v
                    if a < out.shape[0] and b < out.shape[1]:
                        if add:
                            out[a, b] += tile[u][v]
                        else:
                            out[a, b] = tile[u][v]
