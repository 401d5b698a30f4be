/* Input checks that GGML itself does not make at graph-build time.
 *
 * GGML_ASSERT catches most bad inputs and the generated guard turns those into Python errors.
 * The cases below are *not* asserted when the op is built: they divide by zero or dereference
 * NULL while building, abort later in a compute worker thread (where nothing can be caught), or
 * silently read out of bounds. build_ffi.py calls `gadget_check_<op>(args...)` from the guard of
 * every op that has one here (matched by name), before calling GGML; a check returns 0 after
 * gadget_reject() has recorded the message, and the guard then fails like a failed GGML_ASSERT.
 *
 * Included by the generated module after ggml.h and the guard machinery (gadget_message,
 * gadget_failed). Our own code, not a copy of GGML's.
 */

#include <stdarg.h>
#include <stdint.h>

static int gadget_reject(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    int n = snprintf(gadget_message, sizeof gadget_message, "gadget-check: ");
    vsnprintf(gadget_message + n, sizeof gadget_message - n, fmt, args);
    va_end(args);
    gadget_failed = 1;
    return 0;
}

/* An enum argument within [0, count): GGML indexes its tables with it. */
static int gadget_enum_ok(long long value, long long count, const char *name, const char *tag) {
    if (value < 0 || value >= count) {
        return gadget_reject("%s = %lld is not a valid enum %s (0..%lld)", name, value, tag, count - 1);
    }
    return 1;
}

#define GADGET_REQUIRE(cond, ...) do { if (!(cond)) return gadget_reject(__VA_ARGS__); } while (0)
#define GADGET_TENSOR(t) GADGET_REQUIRE((t) != NULL, "tensor argument '" #t "' is NULL")

/* Bytes a view of `a` with shape ne[] and strides nb[] starting at `offset` reaches. */
static int gadget_view_fits(const struct ggml_tensor *a, int n, const int64_t *ne, const size_t *nb,
                            size_t offset) {
    for (int i = 0; i < n; i++) {
        GADGET_REQUIRE(ne[i] >= 0, "view dimension %d is negative (%lld)", i, (long long) ne[i]);
        if (ne[i] == 0) {
            return 1;  /* an empty view reads nothing */
        }
    }
    size_t last = offset + ggml_row_size(a->type, ne[0]);
    for (int i = 1; i < n; i++) {
        /* (ne[i] - 1) * nb[i] must not wrap around: compare by division first */
        GADGET_REQUIRE(nb[i] == 0 || (size_t) (ne[i] - 1) <= (SIZE_MAX - last) / nb[i],
                       "view dimension %d (%lld elements of stride %zu) overflows the address space",
                       i, (long long) ne[i], nb[i]);
        last += (size_t) (ne[i] - 1) * nb[i];
    }
    GADGET_REQUIRE(last <= ggml_nbytes(a),
                   "view reaches byte %zu of a tensor of %zu bytes (offset %zu; shape and strides "
                   "out of bounds)", last, ggml_nbytes(a), offset);
    return 1;
}

static int gadget_dims_ok(enum ggml_type type, int n, const int64_t *ne) {
    GADGET_REQUIRE(ne != NULL, "the shape pointer is NULL");
    for (int i = 0; i < n; i++) {
        GADGET_REQUIRE(ne[i] >= 0, "dimension %d is negative (%lld)", i, (long long) ne[i]);
    }
    GADGET_REQUIRE(type >= 0 && type < GGML_TYPE_COUNT && ggml_type_size(type) > 0,
                   "type %d is not a GGML tensor type (0..%d, removed types excluded)", (int) type,
                   GGML_TYPE_COUNT - 1);
    if (n > 0 && ggml_blck_size(type) > 1) {
        GADGET_REQUIRE(ne[0] % ggml_blck_size(type) == 0,
                       "a %s row must hold a multiple of %lld elements (one block), got ne0=%lld",
                       ggml_type_name(type), (long long) ggml_blck_size(type), (long long) ne[0]);
    }
    /* Elements and bytes must fit in 63 bits, or ggml_nbytes wraps (to 0, say) and compute later
       writes far outside the tensor. */
    const int64_t limit = INT64_MAX / 8;
    int64_t elements = 1, bytes = n > 0 ? (int64_t) 1 : 0;
    for (int i = 0; i < n; i++) {
        if (ne[i] == 0) {
            return 1;   /* an empty tensor */
        }
        GADGET_REQUIRE(elements <= limit / ne[i], "the shape has more than 2^60 elements (dimension %d is %lld)",
                       i, (long long) ne[i]);
        elements *= ne[i];
    }
    bytes = (elements / ggml_blck_size(type));
    GADGET_REQUIRE(bytes <= limit / (int64_t) ggml_type_size(type), "the tensor would need more than 2^60 bytes "
                   "(%lld elements of %s)", (long long) elements, ggml_type_name(type));
    return 1;
}

static int gadget_room(struct ggml_context *ctx, size_t need, const char *what) {
    size_t used = ggml_used_mem(ctx), size = ggml_get_mem_size(ctx);
    GADGET_REQUIRE(used <= size && need <= size - used,
                   "the context's memory pool is full: %s needs %zu bytes, %zu of %zu are free; "
                   "create the context with a larger mem_size", what, need, size - used, size);
    return 1;
}

/* --- tensors and shapes ----------------------------------------------------------------- */

static int gadget_check_ggml_new_tensor(struct ggml_context *ctx, enum ggml_type type, int n_dims, const int64_t *ne) {
    (void) ctx;
    GADGET_REQUIRE(n_dims >= 1 && n_dims <= GGML_MAX_DIMS, "n_dims must be 1..%d, got %d", GGML_MAX_DIMS, n_dims);
    return gadget_dims_ok(type, n_dims, ne);
}
static int gadget_check_ggml_new_tensor_1d(struct ggml_context *ctx, enum ggml_type type, int64_t ne0) {
    int64_t ne[1] = {ne0}; (void) ctx; return gadget_dims_ok(type, 1, ne);
}
static int gadget_check_ggml_new_tensor_2d(struct ggml_context *ctx, enum ggml_type type, int64_t ne0, int64_t ne1) {
    int64_t ne[2] = {ne0, ne1}; (void) ctx; return gadget_dims_ok(type, 2, ne);
}
static int gadget_check_ggml_new_tensor_3d(struct ggml_context *ctx, enum ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2) {
    int64_t ne[3] = {ne0, ne1, ne2}; (void) ctx; return gadget_dims_ok(type, 3, ne);
}
static int gadget_check_ggml_new_tensor_4d(struct ggml_context *ctx, enum ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    int64_t ne[4] = {ne0, ne1, ne2, ne3}; (void) ctx; return gadget_dims_ok(type, 4, ne);
}
static int gadget_check_ggml_reshape_1d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0) {
    int64_t ne[1] = {ne0}; (void) ctx; GADGET_TENSOR(a); return gadget_dims_ok(a->type, 1, ne);
}
static int gadget_check_ggml_reshape_2d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1) {
    int64_t ne[2] = {ne0, ne1}; (void) ctx; GADGET_TENSOR(a); return gadget_dims_ok(a->type, 2, ne);
}
static int gadget_check_ggml_reshape_3d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2) {
    int64_t ne[3] = {ne0, ne1, ne2}; (void) ctx; GADGET_TENSOR(a); return gadget_dims_ok(a->type, 3, ne);
}
static int gadget_check_ggml_reshape_4d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    int64_t ne[4] = {ne0, ne1, ne2, ne3}; (void) ctx; GADGET_TENSOR(a); return gadget_dims_ok(a->type, 4, ne);
}
static int gadget_check_ggml_cont_4d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3) {
    int64_t ne[4] = {ne0, ne1, ne2, ne3}; (void) ctx; GADGET_TENSOR(a); return gadget_dims_ok(a->type, 4, ne);
}

static int gadget_check_ggml_view_1d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, size_t offset) {
    int64_t ne[1] = {ne0}; size_t nb[1] = {0}; (void) ctx; GADGET_TENSOR(a);
    return gadget_view_fits(a, 1, ne, nb, offset);
}
static int gadget_check_ggml_view_2d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, size_t nb1, size_t offset) {
    int64_t ne[2] = {ne0, ne1}; size_t nb[2] = {0, nb1}; (void) ctx; GADGET_TENSOR(a);
    return gadget_view_fits(a, 2, ne, nb, offset);
}
static int gadget_check_ggml_view_3d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, size_t nb1, size_t nb2, size_t offset) {
    int64_t ne[3] = {ne0, ne1, ne2}; size_t nb[3] = {0, nb1, nb2}; (void) ctx; GADGET_TENSOR(a);
    return gadget_view_fits(a, 3, ne, nb, offset);
}
static int gadget_check_ggml_view_4d(struct ggml_context *ctx, struct ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offset) {
    int64_t ne[4] = {ne0, ne1, ne2, ne3}; size_t nb[4] = {0, nb1, nb2, nb3}; (void) ctx; GADGET_TENSOR(a);
    return gadget_view_fits(a, 4, ne, nb, offset);
}

/* --- memory of the context -------------------------------------------------------------- */

static int gadget_check_ggml_new_graph_custom(struct ggml_context *ctx, size_t size, bool grads) {
    GADGET_REQUIRE(ctx != NULL, "the context is NULL");
    return gadget_room(ctx, ggml_graph_overhead_custom(size, grads), "the graph");
}
static int gadget_check_ggml_new_graph(struct ggml_context *ctx) {
    GADGET_REQUIRE(ctx != NULL, "the context is NULL");
    return gadget_room(ctx, ggml_graph_overhead(), "the graph");
}
static int gadget_check_ggml_new_buffer(struct ggml_context *ctx, size_t nbytes) {
    GADGET_REQUIRE(ctx != NULL, "the context is NULL");
    size_t padded = (nbytes + GGML_MEM_ALIGN - 1) / GGML_MEM_ALIGN * GGML_MEM_ALIGN;
    return gadget_room(ctx, padded + (ggml_tensor_overhead() - GGML_TENSOR_SIZE), "the buffer");
}

/* --- matrix products, norms, rope, attention ------------------------------------------------ */

static int gadget_check_ggml_mul_mat(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b) {
    (void) ctx; GADGET_TENSOR(a); GADGET_TENSOR(b);
    GADGET_REQUIRE(a->ne[2] > 0 && a->ne[3] > 0, "mul_mat: a has an empty batch dimension [%lld, %lld, %lld, %lld]",
                   (long long) a->ne[0], (long long) a->ne[1], (long long) a->ne[2], (long long) a->ne[3]);
    return 1;
}

static int gadget_rows_contiguous(const struct ggml_tensor *a, const char *op) {
    GADGET_REQUIRE(a != NULL, "%s: tensor argument 'a' is NULL", op);
    GADGET_REQUIRE(a->nb[0] == ggml_type_size(a->type),
                   "%s needs rows of contiguous elements (nb[0] == %zu), got nb[0] = %zu: apply ggml_cont first",
                   op, ggml_type_size(a->type), a->nb[0]);
    return 1;
}
static int gadget_check_ggml_rms_norm(struct ggml_context *ctx, struct ggml_tensor *a, float eps) {
    (void) ctx; (void) eps; return gadget_rows_contiguous(a, "rms_norm");
}
static int gadget_check_ggml_group_norm(struct ggml_context *ctx, struct ggml_tensor *a, int n_groups, float eps) {
    (void) ctx; (void) eps;
    GADGET_REQUIRE(n_groups >= 1, "group_norm: n_groups must be >= 1, got %d", n_groups);
    return gadget_rows_contiguous(a, "group_norm");
}

static int gadget_rope_args(const struct ggml_tensor *a, const struct ggml_tensor *b, int n_dims) {
    GADGET_TENSOR(a); GADGET_TENSOR(b);
    GADGET_REQUIRE(n_dims > 0 && n_dims % 2 == 0 && n_dims <= a->ne[0],
                   "rope: n_dims must be even and in 2..ne0 (%lld), got %d", (long long) a->ne[0], n_dims);
    return gadget_rows_contiguous(a, "rope");
}
static int gadget_check_ggml_rope(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int n_dims, int mode) {
    (void) ctx; (void) mode; return gadget_rope_args(a, b, n_dims);
}
static int gadget_check_ggml_rope_inplace(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int n_dims, int mode) {
    (void) ctx; (void) mode; return gadget_rope_args(a, b, n_dims);
}
#define GADGET_ROPE_EXT_CHECK(name)                                                                        \
    static int gadget_check_##name(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b,  \
                                   struct ggml_tensor *c, int n_dims, int mode, int n_ctx_orig,             \
                                   float freq_base, float freq_scale, float ext_factor, float attn_factor,  \
                                   float beta_fast, float beta_slow) {                                      \
        (void) ctx; (void) mode; (void) n_ctx_orig; (void) freq_base; (void) freq_scale;                    \
        (void) ext_factor; (void) attn_factor; (void) beta_fast; (void) beta_slow;                          \
        if (c != NULL) {                                                                                    \
            GADGET_REQUIRE(c->ne[0] >= n_dims / 2, "rope: freq_factors needs >= n_dims/2 (%d) values, has %lld", \
                           n_dims / 2, (long long) c->ne[0]);                                              \
        }                                                                                                   \
        return gadget_rope_args(a, b, n_dims);                                                              \
    }
GADGET_ROPE_EXT_CHECK(ggml_rope_ext)
GADGET_ROPE_EXT_CHECK(ggml_rope_ext_inplace)
GADGET_ROPE_EXT_CHECK(ggml_rope_ext_back)

static int gadget_check_ggml_flash_attn_ext(struct ggml_context *ctx, struct ggml_tensor *q, struct ggml_tensor *k,
                                            struct ggml_tensor *v, struct ggml_tensor *mask, float scale,
                                            float max_bias, float logit_softcap) {
    (void) ctx; (void) scale; (void) max_bias; (void) logit_softcap;
    GADGET_TENSOR(q); GADGET_TENSOR(k); GADGET_TENSOR(v);
    GADGET_REQUIRE(v->ne[1] == k->ne[1] && v->ne[2] > 0 && q->ne[2] % v->ne[2] == 0,
                   "flash_attn_ext: v [%lld, %lld, %lld] must have k's kv length (%lld) and a head count dividing q's (%lld)",
                   (long long) v->ne[0], (long long) v->ne[1], (long long) v->ne[2],
                   (long long) k->ne[1], (long long) q->ne[2]);
    GADGET_REQUIRE(k->ne[2] > 0 && q->ne[2] % k->ne[2] == 0,
                   "flash_attn_ext: q heads (%lld) must be a multiple of k heads (%lld)",
                   (long long) q->ne[2], (long long) k->ne[2]);
    if (mask != NULL) {
        GADGET_REQUIRE(mask->ne[0] >= k->ne[1] && mask->ne[1] >= q->ne[1],
                       "flash_attn_ext: mask [%lld, %lld] must cover [n_kv=%lld, n_batch=%lld]",
                       (long long) mask->ne[0], (long long) mask->ne[1], (long long) k->ne[1], (long long) q->ne[1]);
    }
    return 1;
}

static int gadget_check_ggml_soft_max_ext(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *mask,
                                          float scale, float max_bias) {
    (void) ctx; (void) scale; (void) max_bias; GADGET_TENSOR(a);
    if (mask != NULL) {
        GADGET_REQUIRE(mask->ne[0] == a->ne[0] && mask->ne[1] >= a->ne[1],
                       "soft_max_ext: mask [%lld, %lld] must match a's rows [%lld, %lld]",
                       (long long) mask->ne[0], (long long) mask->ne[1], (long long) a->ne[0], (long long) a->ne[1]);
    }
    return 1;
}

/* --- indexing ----------------------------------------------------------------------------- */

static int gadget_check_ggml_set_1d(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, size_t offset) {
    (void) ctx; GADGET_TENSOR(a); GADGET_TENSOR(b);
    GADGET_REQUIRE(offset <= ggml_nbytes(a) && ggml_nbytes(b) <= ggml_nbytes(a) - offset,
                   "set_1d: %zu bytes at offset %zu exceed the %zu bytes of a", ggml_nbytes(b), offset, ggml_nbytes(a));
    return 1;
}
static int gadget_acc_fits(const struct ggml_tensor *a, const struct ggml_tensor *b, size_t nb1, size_t nb2,
                           size_t nb3, size_t offset, const char *op) {
    GADGET_REQUIRE(a != NULL && b != NULL, "%s: a tensor argument is NULL", op);
    int64_t ne[4] = {b->ne[0], b->ne[1], b->ne[2], b->ne[3]};
    size_t nb[4] = {0, nb1, nb2, nb3};
    GADGET_REQUIRE(b->type == a->type, "%s: b must have a's type", op);
    return gadget_view_fits(a, 4, ne, nb, offset);
}
static int gadget_check_ggml_acc(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, size_t nb1,
                                 size_t nb2, size_t nb3, size_t offset) {
    (void) ctx; return gadget_acc_fits(a, b, nb1, nb2, nb3, offset, "acc");
}
static int gadget_check_ggml_set(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, size_t nb1,
                                 size_t nb2, size_t nb3, size_t offset) {
    (void) ctx; return gadget_acc_fits(a, b, nb1, nb2, nb3, offset, "set");
}
static int gadget_check_ggml_set_2d(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, size_t nb1,
                                    size_t offset) {
    (void) ctx; return gadget_acc_fits(a, b, nb1, a ? a->nb[2] : 0, a ? a->nb[3] : 0, offset, "set_2d");
}
static int gadget_check_ggml_top_k(struct ggml_context *ctx, struct ggml_tensor *a, int k) {
    (void) ctx; GADGET_TENSOR(a);
    GADGET_REQUIRE(k >= 1 && k <= a->ne[0], "top_k: k must be in 1..%lld, got %d", (long long) a->ne[0], k);
    return 1;
}
/* Negative padding crops, which GGML computes correctly; only a non-positive result is invalid. */
static int gadget_check_ggml_pad(struct ggml_context *ctx, struct ggml_tensor *a, int p0, int p1, int p2, int p3) {
    (void) ctx; GADGET_TENSOR(a);
    GADGET_REQUIRE(a->ne[0] + p0 >= 0 && a->ne[1] + p1 >= 0 && a->ne[2] + p2 >= 0 && a->ne[3] + p3 >= 0,
                   "pad: padding %d %d %d %d would leave a negative size", p0, p1, p2, p3);
    return 1;
}
static int gadget_check_ggml_pad_ext(struct ggml_context *ctx, struct ggml_tensor *a, int lp0, int rp0, int lp1, int rp1,
                                     int lp2, int rp2, int lp3, int rp3) {
    (void) ctx; GADGET_TENSOR(a);
    GADGET_REQUIRE(a->ne[0] + lp0 + rp0 >= 0 && a->ne[1] + lp1 + rp1 >= 0 && a->ne[2] + lp2 + rp2 >= 0 &&
                   a->ne[3] + lp3 + rp3 >= 0, "pad_ext: the padding would leave a negative size");
    return 1;
}

/* --- convolutions and pooling ---------------------------------------------------------------- */

#define GADGET_POSITIVE(x) GADGET_REQUIRE((x) >= 1, "%s must be >= 1, got %d", #x, (int) (x))

static int gadget_check_ggml_conv_1d(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int s0, int p0, int d0) {
    (void) ctx; (void) p0; GADGET_TENSOR(a); GADGET_TENSOR(b); GADGET_POSITIVE(s0); GADGET_POSITIVE(d0); return 1;
}
static int gadget_check_ggml_conv_1d_dw(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int s0, int p0, int d0) {
    (void) ctx; (void) p0; GADGET_TENSOR(a); GADGET_TENSOR(b); GADGET_POSITIVE(s0); GADGET_POSITIVE(d0); return 1;
}
static int gadget_check_ggml_conv_1d_ph(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int s, int d) {
    (void) ctx; GADGET_TENSOR(a); GADGET_TENSOR(b); GADGET_POSITIVE(s); GADGET_POSITIVE(d); return 1;
}
static int gadget_check_ggml_conv_transpose_1d(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int s0, int p0, int d0) {
    (void) ctx; (void) p0; GADGET_TENSOR(a); GADGET_TENSOR(b); GADGET_POSITIVE(s0); GADGET_POSITIVE(d0); return 1;
}
#define GADGET_CONV2D_CHECK(name)                                                                          \
    static int gadget_check_##name(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b,  \
                                   int s0, int s1, int p0, int p1, int d0, int d1) {                         \
        (void) ctx; (void) p0; (void) p1; GADGET_TENSOR(a); GADGET_TENSOR(b);                              \
        GADGET_POSITIVE(s0); GADGET_POSITIVE(s1); GADGET_POSITIVE(d0); GADGET_POSITIVE(d1); return 1;      \
    }
GADGET_CONV2D_CHECK(ggml_conv_2d)
GADGET_CONV2D_CHECK(ggml_conv_2d_dw)
GADGET_CONV2D_CHECK(ggml_conv_2d_direct)
static int gadget_check_ggml_conv_transpose_2d_p0(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int stride) {
    (void) ctx; GADGET_TENSOR(a); GADGET_TENSOR(b); GADGET_POSITIVE(stride); return 1;
}
static int gadget_check_ggml_im2col(struct ggml_context *ctx, struct ggml_tensor *a, struct ggml_tensor *b, int s0, int s1,
                                    int p0, int p1, int d0, int d1, bool is_2D, enum ggml_type dst_type) {
    (void) ctx; (void) p0; (void) p1; (void) dst_type; GADGET_TENSOR(a); GADGET_TENSOR(b);
    GADGET_POSITIVE(s0); GADGET_POSITIVE(d0);
    if (is_2D) { GADGET_POSITIVE(s1); GADGET_POSITIVE(d1); }
    return 1;
}
static int gadget_check_ggml_pool_1d(struct ggml_context *ctx, struct ggml_tensor *a, enum ggml_op_pool op, int k0, int s0, int p0) {
    (void) ctx; (void) op; (void) p0; GADGET_TENSOR(a); GADGET_POSITIVE(k0); GADGET_POSITIVE(s0); return 1;
}
static int gadget_check_ggml_pool_2d(struct ggml_context *ctx, struct ggml_tensor *a, enum ggml_op_pool op, int k0, int k1,
                                     int s0, int s1, float p0, float p1) {
    (void) ctx; (void) op; (void) p0; (void) p1; GADGET_TENSOR(a);
    GADGET_POSITIVE(k0); GADGET_POSITIVE(k1); GADGET_POSITIVE(s0); GADGET_POSITIVE(s1); return 1;
}
static int gadget_check_ggml_win_part(struct ggml_context *ctx, struct ggml_tensor *a, int w) {
    (void) ctx; GADGET_TENSOR(a); GADGET_POSITIVE(w); return 1;
}
