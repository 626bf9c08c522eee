/* One greedy decode step of a Llama-family model on the CPU, for batch 1.
 *
 * Python (bot/native/__init__.py) packs the weights, runs the prompt through transformers, copies
 * its KV cache here and then calls `icl_step` once per token: one call does all layers, the head
 * and the argmax, so a token costs no Python and no per-operator dispatch.
 *
 * Linear weights come in three layouts, chosen per layer by what the weight exactly is:
 *   Q4:  groups of 32 inputs, w = d * q + m with q in 0..15 (a dequantized Q4_1 GGUF tensor), d and m
 *        in fp16 as Q4_1 stores them.
 *   Q8:  groups of 32 inputs, w = d * q with q in -127..127 and d an fp16 (a dequantized Q8_0 tensor).
 *   BF16: every weight is a bfloat16 number (a bf16 checkpoint loaded in fp32): its top 16 bits.
 *   (Their memory layout is described at BLOCK below.)
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

enum { KIND_F32 = 0, KIND_Q8 = 1, KIND_Q4 = 2, KIND_BF16 = 3 };
#define GROUP 32

typedef struct {
    int32_t kind, rows, cols;
    const void *q;       /* F32: float[rows][cols]; Q4, Q8, BF16: codes in row blocks (see BLOCK) */
    const uint16_t *dm;  /* Q4, Q8: fp16 scales in row blocks; F32: unused */
    /* A LoRA update, when rank > 0: y += scale * B (A x), A: float[rank][cols], B: float[rows][rank]. */
    int32_t rank;
    float lora_scale;
    const float *lora_a, *lora_b;
} Linear;

typedef struct {
    const float *attn_norm, *ffn_norm;
    Linear q, k, v, o, gate, up, down;
} Layer;

typedef struct {
    int32_t hidden, inter, layers, heads, kv_heads, head_dim, vocab, max_len;
    float eps, attn_scale;  /* attn_scale: head_dim ** -0.5, computed as transformers does */
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

/* ---- matrix-vector products ------------------------------------------------------------------ */

static inline float half_to_float(uint16_t h) {
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

/* Q4 and Q8 weights are stored in blocks of 16 rows (BLOCK; the last block padded with zero rows),
 * so that one vector holds one column of 16 rows and each row's sum lives in its own lane: no
 * horizontal sums, and one vector operation applies 16 rows' group scales. Per block b, group g:
 *   Q4 codes: uint8 [b][g][j < 16][row]: q[row][32g + j] in the low nibble, q[row][32g + 16 + j] in
 *             the high one; scales: fp16 [b][g][d or m][row].
 *   Q8 codes: int8 [b][g][j < 32][row]; scales: fp16 [b][g][row].
 *   BF16:     uint16 [b][column][row], no scales. */
#define BLOCK 16

#ifdef ICL_AVX512
/* The hardware prefetcher alone left one core reading about 6 GB/s here; asking for the weights
 * 8 groups ahead made the Q4 kernel about 25% faster on weights streamed from memory. */
#define AHEAD 8
static inline void prefetch(const void *at, size_t bytes) {
    for (size_t offset = 0; offset < bytes; offset += 64) _mm_prefetch((const char *)at + offset, _MM_HINT_T0);
}
#endif

/* y[0..16) for one block of Q4 rows; `sums` holds sum_j x_j per group, shared by all rows. */
static void block_q4(const uint8_t *q, const uint16_t *dm, const float *x, const float *sums, int groups, float *y) {
#ifdef ICL_AVX512
    const __m512i nibble = _mm512_set1_epi32(15);
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++, q += 16 * BLOCK, dm += 2 * BLOCK) {
        const float *xg = x + g * GROUP;
        prefetch(q + AHEAD * 16 * BLOCK, 16 * BLOCK);
        prefetch(dm + AHEAD * 2 * BLOCK, 2 * BLOCK * sizeof(uint16_t));
        __m512 p0 = _mm512_setzero_ps(), p1 = _mm512_setzero_ps(), p2 = _mm512_setzero_ps(), p3 = _mm512_setzero_ps();
        for (int j = 0; j < 16; j += 2) {
            __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + j * BLOCK)));
            __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + (j + 1) * BLOCK)));
            p0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b0, nibble)), _mm512_set1_ps(xg[j]), p0);
            p1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b0, 4)), _mm512_set1_ps(xg[j + 16]), p1);
            p2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b1, nibble)), _mm512_set1_ps(xg[j + 1]), p2);
            p3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b1, 4)), _mm512_set1_ps(xg[j + 17]), p3);
        }
        __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)dm));
        __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dm + BLOCK)));
        acc = _mm512_fmadd_ps(d, _mm512_add_ps(_mm512_add_ps(p0, p1), _mm512_add_ps(p2, p3)), acc);
        acc = _mm512_fmadd_ps(m, _mm512_set1_ps(sums[g]), acc);
    }
    _mm512_storeu_ps(y, acc);
#else
    float acc[BLOCK] = {0};
    for (int g = 0; g < groups; g++, q += 16 * BLOCK, dm += 2 * BLOCK) {
        const float *xg = x + g * GROUP;
        for (int r = 0; r < BLOCK; r++) {
            float p = 0.0f;
            for (int j = 0; j < 16; j++) {
                uint8_t byte = q[j * BLOCK + r];
                p += (float)(byte & 15) * xg[j] + (float)(byte >> 4) * xg[j + 16];
            }
            acc[r] += half_to_float(dm[r]) * p + half_to_float(dm[BLOCK + r]) * sums[g];
        }
    }
    memcpy(y, acc, sizeof acc);
#endif
}

static void block_q8(const int8_t *q, const uint16_t *d, const float *x, int groups, float *y) {
#ifdef ICL_AVX512
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++, q += GROUP * BLOCK, d += BLOCK) {
        const float *xg = x + g * GROUP;
        prefetch(q + AHEAD * GROUP * BLOCK, GROUP * BLOCK);
        prefetch(d + AHEAD * BLOCK, BLOCK * sizeof(uint16_t));
        __m512 p[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int j = 0; j < GROUP; j += 4)
            for (int u = 0; u < 4; u++) {
                __m128i codes = _mm_loadu_si128((const __m128i *)(q + (j + u) * BLOCK));
                p[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)), _mm512_set1_ps(xg[j + u]), p[u]);
            }
        __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
        acc = _mm512_fmadd_ps(scale, _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3])), acc);
    }
    _mm512_storeu_ps(y, acc);
#else
    float acc[BLOCK] = {0};
    for (int g = 0; g < groups; g++, q += GROUP * BLOCK, d += BLOCK) {
        for (int r = 0; r < BLOCK; r++) {
            float p = 0.0f;
            for (int j = 0; j < GROUP; j++) p += (float)q[j * BLOCK + r] * x[g * GROUP + j];
            acc[r] += half_to_float(d[r]) * p;
        }
    }
    memcpy(y, acc, sizeof acc);
#endif
}

static void block_bf16(const uint16_t *w, const float *x, int cols, float *y) {
#ifdef ICL_AVX512
    __m512 p[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int j = 0;
    for (; j + 4 <= cols; j += 4) {
        prefetch(w + (j + 8 * AHEAD) * BLOCK, 4 * BLOCK * sizeof(uint16_t));
        for (int u = 0; u < 4; u++) {
            __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + (j + u) * BLOCK)));
            p[u] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)), _mm512_set1_ps(x[j + u]), p[u]);
        }
    }
    for (; j < cols; j++) {
        __m512i bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + j * BLOCK)));
        p[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)), _mm512_set1_ps(x[j]), p[0]);
    }
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3])));
#else
    float acc[BLOCK] = {0};
    for (int j = 0; j < cols; j++)
        for (int r = 0; r < BLOCK; r++) {
            uint32_t bits = (uint32_t)w[j * BLOCK + r] << 16;
            float weight;
            memcpy(&weight, &bits, sizeof weight);
            acc[r] += weight * x[j];
        }
    memcpy(y, acc, sizeof acc);
#endif
}

static void group_sums(const float *x, int n, float *sums) {
    for (int g = 0; g < n / GROUP; g++) {
        float s = 0.0f;
        for (int j = 0; j < GROUP; j++) s += x[g * GROUP + j];
        sums[g] = s;
    }
}

/* y = W x for the row blocks [begin, end) of W (rows for F32). */
static void blocks(const Linear *w, const float *x, const float *sums, float *y, int begin, int end) {
    int groups = w->cols / GROUP;
    for (int b = begin; b < end; b++) {
        float out[BLOCK];
        if (w->kind == KIND_F32) {
            y[b] = dot_f32((const float *)w->q + (size_t)b * w->cols, x, w->cols);
            continue;
        }
        if (w->kind == KIND_BF16)
            block_bf16((const uint16_t *)w->q + (size_t)b * w->cols * BLOCK, x, w->cols, out);
        else if (w->kind == KIND_Q4)
            block_q4((const uint8_t *)w->q + (size_t)b * groups * 16 * BLOCK, w->dm + (size_t)b * groups * 2 * BLOCK,
                     x, sums, groups, out);
        else
            block_q8((const int8_t *)w->q + (size_t)b * groups * GROUP * BLOCK, w->dm + (size_t)b * groups * BLOCK, x,
                     groups, out);
        int n = w->rows - b * BLOCK < BLOCK ? w->rows - b * BLOCK : BLOCK;
        memcpy(y + b * BLOCK, out, sizeof(float) * n);
    }
}

/* Each thread of the team takes an equal, contiguous share of W's row blocks; no barrier. */
static void gemv_share(const Linear *w, const float *x, const float *sums, float *y) {
#ifdef _OPENMP
    int threads = omp_get_num_threads(), me = omp_get_thread_num();
#else
    int threads = 1, me = 0;
#endif
    int units = w->kind == KIND_F32 ? w->rows : (w->rows + BLOCK - 1) / BLOCK;
    int chunk = (units + threads - 1) / threads;
    int begin = me * chunk, end = begin + chunk < units ? begin + chunk : units;
    if (begin >= end) return;
    blocks(w, x, sums, y, begin, end);
    if (w->rank > 0) {
        /* Each thread computes the small A x itself (rank x cols), so no barrier is needed. */
        float t[w->rank];
        for (int i = 0; i < w->rank; i++) t[i] = dot_f32(w->lora_a + (size_t)i * w->cols, x, w->cols);
        int per = w->kind == KIND_F32 ? 1 : BLOCK;
        int last = end * per < w->rows ? end * per : w->rows;
        for (int r = begin * per; r < last; r++) y[r] += w->lora_scale * dot_f32(w->lora_b + (size_t)r * w->rank, t, w->rank);
    }
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
    float scale = m->attn_scale, top = -INFINITY;
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
