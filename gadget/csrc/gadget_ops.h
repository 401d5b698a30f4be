/* gadget's own CPU kernels, run by GGML as custom ops (ggml_map_custom1) on its worker threads.
 *
 * GGML's exact GELU (ggml_gelu_erf) calls libm's erff once per element, and its tanh GELU reads
 * an F16 table (inputs rounded to F16); BERT's feed-forward needs the exact one and spends most
 * of its non-matmul time there. This kernel computes it with branch-free float arithmetic the
 * compiler vectorizes, in one clone per x86-64 level chosen at load time (target_clones), so a
 * portable build runs the widest the CPU has.
 *
 * erf(z) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2), t = 1 / (1 + p z), z >= 0
 * (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7; for negative inputs 1 + erf is taken as that
 * product directly, without cancellation), and exp by range reduction to
 * 2^n exp(r), |r| <= ln(2)/2, with its Taylor series to r^7 (relative error < 1e-8).
 */
#include <stdint.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GADGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("O3")))
#else
#define GADGET_CLONES
#endif

static inline float gadget_exp_neg(float y) {       /* exp(y) for y <= 0 */
    y = y < -87.0f ? -87.0f : y;
    const float n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;     /* round(y / ln 2) */
    const float r = (y - n * 0.693145752f) - n * 1.42860677e-06f;      /* y - n ln 2, two parts */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t) n + 127) << 23;                   /* 2^n, n in [-126, 0] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

GADGET_CLONES
static void gadget_gelu_erf_f32(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        const float z = (v < 0 ? -v : v) * 0.707106781f;               /* |v| / sqrt(2) */
        const float t = 1.0f / (1.0f + 0.3275911f * z);
        float q = 1.061405429f;
        q = q * t - 1.453152027f;
        q = q * t + 1.421413741f;
        q = q * t - 0.284496736f;
        q = q * t + 0.254829592f;
        const float c = q * t * gadget_exp_neg(-z * z);               /* erfc(z) = 1 - erf(z) */
        y[i] = 0.5f * v * (v < 0 ? c : 2.0f - c);                      /* 1 + erf(v / sqrt 2) */
    }
}

/* ggml_custom1_op_t: dst = GELU(a), both contiguous F32; thread ith of nth takes its share. */
static void gadget_op_gelu_erf(struct ggml_tensor *dst, const struct ggml_tensor *a, int ith, int nth,
                               void *userdata) {
    (void) userdata;
    const int64_t n = ggml_nelements(a);
    const int64_t per = (n + nth - 1) / nth;
    const int64_t start = per * ith, end = start + per < n ? start + per : n;
    if (start < end) {
        gadget_gelu_erf_f32((float *) dst->data + start, (const float *) a->data + start, end - start);
    }
}

/* Attention of one query row over the first n_keys rows of keys / values (each row head_dim
 * floats, rows `stride` floats apart): out = softmax(scale q.k_j) . v_j. The order of every sum is
 * fixed by this code (eight partial sums per dot product, keys in order), so the result does not
 * depend on where the sequence sits in a batch. */
GADGET_CLONES
static void gadget_attend(float *out, const float *q, const float *keys, const float *values, int64_t n_keys,
                          int64_t head_dim, int64_t stride, float scale, float *p) {
    float max = -3.0e38f;
    for (int64_t j = 0; j < n_keys; j++) {
        const float *kj = keys + j * stride;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t d = 0;
        for (; d + 8 <= head_dim; d += 8) {
            for (int l = 0; l < 8; l++) {
                acc[l] += q[d + l] * kj[d + l];
            }
        }
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; d < head_dim; d++) {
            s += q[d] * kj[d];
        }
        p[j] = s * scale;
        max = p[j] > max ? p[j] : max;
    }
    for (int64_t j = 0; j < n_keys; j++) {
        p[j] = gadget_exp_neg(p[j] - max);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; j++) {
        sum += p[j];
    }
    for (int64_t d = 0; d < head_dim; d++) {
        out[d] = 0.0f;
    }
    for (int64_t j = 0; j < n_keys; j++) {
        const float w = p[j] / sum;
        const float *vj = values + j * stride;
        for (int64_t d = 0; d < head_dim; d++) {
            out[d] += w * vj[d];
        }
    }
}

/* ggml_custom_op_t for gadget_attention (see gadget.ggml): dst (head_dim * n_head, n_len * n_seq)
 * from src q, k, v (head_dim, n_head, n_len, n_seq), contiguous F32, and src[3] the I32 length of
 * each sequence: every query of a sequence attends to that sequence's first `length` keys, with
 * scale 1 / sqrt(head_dim); rows past a sequence's length are zero. Threads take (sequence, head)
 * pairs in turn. */
static void gadget_op_attention(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    (void) userdata;
    const struct ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2], *lengths = dst->src[3];
    const int64_t head_dim = q->ne[0], n_head = q->ne[1], n_len = q->ne[2], n_seq = q->ne[3];
    const int64_t row = head_dim * n_head;
    const float scale = 1.0f / sqrtf((float) head_dim);
    float p[n_len];
    for (int64_t task = ith; task < n_seq * n_head; task += nth) {
        const int64_t s = task / n_head, h = task % n_head;
        int64_t len = ((const int32_t *) lengths->data)[s];
        len = len < 1 ? 1 : (len > n_len ? n_len : len);
        const int64_t base = s * n_len * row + h * head_dim;
        for (int64_t i = 0; i < n_len; i++) {
            float *o = (float *) dst->data + base + i * row;
            if (i >= len) {
                memset(o, 0, head_dim * sizeof(float));
                continue;
            }
            gadget_attend(o, (const float *) q->data + base + i * row, (const float *) k->data + base,
                          (const float *) v->data + base, len, head_dim, row, scale, p);
        }
    }
}
