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
