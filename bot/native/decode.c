/* One greedy decode step of a Llama-family model on the CPU, for batch 1.
 *
 * Python (bot/native/__init__.py) packs the weights, runs the prompt through transformers, copies
 * its KV cache here and then calls `icl_step` once per token: one call does all layers, the head
 * and the argmax, so a token costs no Python and no per-operator dispatch.
 *
 * Linear weights come in three layouts, chosen per layer by what the weight exactly is:
 *   Q4:  groups of 32 inputs, w = d * q + m with q in 0..15 (a dequantized Q4_1 GGUF tensor).
 *        16 bytes per group: byte j holds q[j] in its low nibble and q[j + 16] in its high one.
 *        dm holds (d, m) per group as fp16, which is how Q4_1 stores them.
 *   Q8:  groups of 32 inputs, w = d * q with q in -127..127 and d an fp16 (a dequantized Q8_0 tensor).
 *   F32: the dense weight.
 * A Q4 or Q8 row is the same set of numbers as the fp32 weight transformers multiplies by; only
 * the order of the additions differs: sum_g (d_g * sum_j q_j x_j + m_g * sum_j x_j).
 *
 * Arithmetic is fp32 throughout. Built with AVX-512 where the CPU has it, plain C otherwise.
 */

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ICL_AVX512 1
#endif

enum { KIND_F32 = 0, KIND_Q8 = 1, KIND_Q4 = 2 };
#define GROUP 32

typedef struct {
    int32_t kind, rows, cols;
    const void *q;       /* F32: float[rows][cols]; Q8: int8[rows][cols]; Q4: uint8[rows][cols / 2] */
    const uint16_t *dm;  /* fp16 bits. Q8: d[rows][cols / 32]; Q4: (d, m)[rows][cols / 32]; F32: unused */
} Linear;

typedef struct {
    const float *attn_norm, *ffn_norm;
    Linear q, k, v, o, gate, up, down;
} Layer;

typedef struct {
    int32_t hidden, inter, layers, heads, kv_heads, head_dim, vocab, max_len;
    float eps;
    const float *inv_freq;   /* head_dim / 2 */
    const float *embed;      /* vocab x hidden, fp32 */
    const float *final_norm; /* hidden */
    Linear head;
    const Layer *layer;
    float *k_cache, *v_cache; /* layers x kv_heads x max_len x head_dim, keys after RoPE */
} Model;

typedef struct {
    /* Scratch, sized by Python: hidden, hidden, heads*head_dim (x2), kv_heads*head_dim (x2),
     * inter (x2), heads*max_len, vocab, and group sums of the widest input (inter / 32). */
    float *x, *xn, *q, *att, *k, *v, *gate, *up, *scores, *logits, *sums;
} Scratch;

/* ---- dot products of one weight row with x ---------------------------------------------- */

static inline float half_to_float(uint16_t h) {
#ifdef ICL_AVX512
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000 | (mantissa << 13); /* inf, nan */
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        exponent = 113;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

static float dot_f32(const float *w, const float *x, int n) {
#ifdef ICL_AVX512
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
#else
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
#endif
}

static float dot_q8(const int8_t *q, const uint16_t *d, const float *x, int n) {
    int groups = n / GROUP;
#ifdef ICL_AVX512
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 2 <= groups; g += 2) {
        for (int u = 0; u < 2; u++) {
            const int8_t *qg = q + (g + u) * GROUP;
            const float *xg = x + (g + u) * GROUP;
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qg)));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qg + 16))));
            __m512 p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
            if (u == 0) a0 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(d[g + u])), p, a0);
            else a1 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(d[g + u])), p, a1);
        }
    }
    for (; g < groups; g++) {
        const int8_t *qg = q + g * GROUP;
        const float *xg = x + g * GROUP;
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qg)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qg + 16))));
        __m512 p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(d[g])), p, a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
    float s = 0.0f;
    for (int g = 0; g < groups; g++) {
        float p = 0.0f;
        for (int j = 0; j < GROUP; j++) p += (float)q[g * GROUP + j] * x[g * GROUP + j];
        s += half_to_float(d[g]) * p;
    }
    return s;
#endif
}

/* `sums` holds sum_j x_j per group, shared by every row of the layer. */
static float dot_q4(const uint8_t *q, const uint16_t *dm, const float *x, const float *sums, int n) {
    int groups = n / GROUP;
    float offset = 0.0f;
    for (int g = 0; g < groups; g++) offset += half_to_float(dm[2 * g + 1]) * sums[g];
#ifdef ICL_AVX512
    const __m512i nibble = _mm512_set1_epi32(15);
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int g = 0;
    for (; g + 2 <= groups; g += 2) {
        for (int u = 0; u < 2; u++) {
            __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + (g + u) * 16)));
            const float *xg = x + (g + u) * GROUP;
            __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, nibble));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
            __m512 p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
            if (u == 0) a0 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(dm[2 * (g + u)])), p, a0);
            else a1 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(dm[2 * (g + u)])), p, a1);
        }
    }
    for (; g < groups; g++) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + g * 16)));
        const float *xg = x + g * GROUP;
        __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, nibble));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
        __m512 p = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xg + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xg)));
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(half_to_float(dm[2 * g])), p, a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + offset;
#else
    float s = 0.0f;
    for (int g = 0; g < groups; g++) {
        float p = 0.0f;
        for (int j = 0; j < GROUP / 2; j++) {
            uint8_t byte = q[g * 16 + j];
            p += (float)(byte & 15) * x[g * GROUP + j] + (float)(byte >> 4) * x[g * GROUP + j + 16];
        }
        s += half_to_float(dm[2 * g]) * p;
    }
    return s + offset;
#endif
}

static void group_sums(const float *x, int n, float *sums) {
    for (int g = 0; g < n / GROUP; g++) {
        float s = 0.0f;
        for (int j = 0; j < GROUP; j++) s += x[g * GROUP + j];
        sums[g] = s;
    }
}

/* y = W x for rows [begin, end) of W. */
static void rows(const Linear *w, const float *x, const float *sums, float *y, int begin, int end) {
    for (int r = begin; r < end; r++) {
        if (w->kind == KIND_Q4)
            y[r] = dot_q4((const uint8_t *)w->q + (size_t)r * (w->cols / 2), w->dm + (size_t)r * (w->cols / GROUP) * 2,
                          x, sums, w->cols);
        else if (w->kind == KIND_Q8)
            y[r] = dot_q8((const int8_t *)w->q + (size_t)r * w->cols, w->dm + (size_t)r * (w->cols / GROUP), x, w->cols);
        else
            y[r] = dot_f32((const float *)w->q + (size_t)r * w->cols, x, w->cols);
    }
}

/* Each thread of the team takes an equal, contiguous share of W's rows; no barrier. */
static void gemv_share(const Linear *w, const float *x, const float *sums, float *y) {
#ifdef _OPENMP
    int threads = omp_get_num_threads(), me = omp_get_thread_num();
#else
    int threads = 1, me = 0;
#endif
    int chunk = (w->rows + threads - 1) / threads;
    int begin = me * chunk, end = begin + chunk < w->rows ? begin + chunk : w->rows;
    if (begin < end) rows(w, x, sums, y, begin, end);
}

/* ---- the other operators ------------------------------------------------------------------ */

static void rms_norm(const float *x, const float *weight, float *out, int n, float eps) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    float scale = 1.0f / sqrtf(s / n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * scale);
}

/* Rotate each head's halves (transformers' rotate_half convention). */
static void rope(float *v, int heads, int head_dim, const float *inv_freq, int pos) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        float c = cosf(angle), s = sinf(angle);
        for (int h = 0; h < heads; h++) {
            float *x = v + h * head_dim;
            float a = x[i], b = x[i + half];
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    }
}

static void attend(const Model *m, const Scratch *s, int layer, int head, int pos) {
    int hd = m->head_dim, kvh = head / (m->heads / m->kv_heads);
    size_t base = ((size_t)layer * m->kv_heads + kvh) * m->max_len * hd;
    const float *q = s->q + head * hd;
    float *scores = s->scores + (size_t)head * m->max_len;
    float scale = 1.0f / sqrtf((float)hd), top = -INFINITY;
    for (int t = 0; t <= pos; t++) {
        scores[t] = dot_f32(m->k_cache + base + (size_t)t * hd, q, hd) * scale;
        if (scores[t] > top) top = scores[t];
    }
    float total = 0.0f;
    for (int t = 0; t <= pos; t++) total += scores[t] = expf(scores[t] - top);
    float *out = s->att + head * hd;
    memset(out, 0, sizeof(float) * hd);
    for (int t = 0; t <= pos; t++) {
        float p = scores[t] / total;
        const float *v = m->v_cache + base + (size_t)t * hd;
        for (int i = 0; i < hd; i++) out[i] += p * v[i];
    }
}

/* ---- one step ------------------------------------------------------------------------------- */

/* Feed `token` at position `pos` (< max_len): append its keys and values to the cache, leave the
 * logits in s->logits and return the argmax (the first index among equal maxima, like torch). */
int icl_step(const Model *m, const Scratch *s, int token, int pos, int threads) {
    int H = m->hidden, hd = m->head_dim;
    memcpy(s->x, m->embed + (size_t)token * H, sizeof(float) * H);

#pragma omp parallel num_threads(threads)
    {
        for (int l = 0; l < m->layers; l++) {
            const Layer *L = m->layer + l;
#pragma omp single
            {
                rms_norm(s->x, L->attn_norm, s->xn, H, m->eps);
                group_sums(s->xn, H, s->sums);
            }
            gemv_share(&L->q, s->xn, s->sums, s->q);
            gemv_share(&L->k, s->xn, s->sums, s->k);
            gemv_share(&L->v, s->xn, s->sums, s->v);
#pragma omp barrier
#pragma omp single
            {
                rope(s->q, m->heads, hd, m->inv_freq, pos);
                rope(s->k, m->kv_heads, hd, m->inv_freq, pos);
                for (int h = 0; h < m->kv_heads; h++) {
                    size_t at = (((size_t)l * m->kv_heads + h) * m->max_len + pos) * hd;
                    memcpy(m->k_cache + at, s->k + h * hd, sizeof(float) * hd);
                    memcpy(m->v_cache + at, s->v + h * hd, sizeof(float) * hd);
                }
            }
#pragma omp for schedule(static)
            for (int h = 0; h < m->heads; h++) attend(m, s, l, h, pos);
#pragma omp single
            group_sums(s->att, m->heads * hd, s->sums);
            gemv_share(&L->o, s->att, s->sums, s->xn);
#pragma omp barrier
#pragma omp single
            {
                for (int i = 0; i < H; i++) s->x[i] += s->xn[i];
                rms_norm(s->x, L->ffn_norm, s->xn, H, m->eps);
                group_sums(s->xn, H, s->sums);
            }
            gemv_share(&L->gate, s->xn, s->sums, s->gate);
            gemv_share(&L->up, s->xn, s->sums, s->up);
#pragma omp barrier
#pragma omp single
            {
                for (int i = 0; i < m->inter; i++) {
                    float g = s->gate[i];
                    s->gate[i] = g / (1.0f + expf(-g)) * s->up[i];
                }
                group_sums(s->gate, m->inter, s->sums);
            }
            gemv_share(&L->down, s->gate, s->sums, s->xn);
#pragma omp barrier
#pragma omp single
            for (int i = 0; i < H; i++) s->x[i] += s->xn[i];
        }
#pragma omp single
        {
            rms_norm(s->x, m->final_norm, s->xn, H, m->eps);
            group_sums(s->xn, H, s->sums);
        }
        gemv_share(&m->head, s->xn, s->sums, s->logits);
    }

    int best = 0;
    for (int i = 1; i < m->vocab; i++)
        if (s->logits[i] > s->logits[best]) best = i;
    return best;
}
