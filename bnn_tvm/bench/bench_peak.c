/* The popcount peak of one core: binary multiply-accumulates per second of an XOR + POPCOUNT + add loop whose
 * operands stay in registers (no loads, so neither caches nor memory bandwidth limit it).
 *
 *     gcc -O3 -march=native bench_peak.c -o bench_peak && ./bench_peak [PATH [SECONDS [TRIALS]]]
 *
 * PATH is one of the loops compiled in (those the compiler's -march allows), or "list" to print them:
 *   avx512-vpopcntq  VPXORQ + VPOPCNTQ + VPADDQ on 512-bit registers (needs __AVX512VPOPCNTDQ__)
 *   avx2-pshufb      VPXOR, then the nibble-lookup popcount (two VPSHUFB into a 16-entry table), byte counts
 *                    added up for 31 rounds and folded into 64-bit lanes with VPSADBW (needs __AVX2__)
 *   scalar-popcnt    XOR + POPCNT + ADD on 64-bit general registers (POPCNT when -march has it)
 * Like a binary convolution's micro-kernel, each round XORs one activation register with several weight
 * registers, each with an accumulator of its own: independent chains, so that the adds' latency hides behind the
 * other chains, and few enough registers that nothing spills to the stack (16 vector and general registers
 * without AVX-512, 32 vector registers with it).
 * Output, one line per trial: "PATH BITS SECONDS" (1 bit = 1 binary MAC), then "checksum N" so that the
 * compiler cannot drop the work.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX2__) || defined(__AVX512VPOPCNTDQ__)
#include <immintrin.h>
#endif


/* Makes the compiler forget what a register holds, at no cost: otherwise it hoists popcount(a ^ w) out of the
 * loop, since a and w never change. */
#define OPAQUE(reg, constraint) __asm__ volatile("" : "+" constraint(reg))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#ifdef __AVX512VPOPCNTDQ__
#define AVX512_CHAINS 12

static uint64_t loop_avx512(uint64_t rounds, uint64_t seed) {
    __m512i a = _mm512_set1_epi64((long long)seed), w[AVX512_CHAINS], acc[AVX512_CHAINS];
    for (int c = 0; c < AVX512_CHAINS; c++) {
        w[c] = _mm512_set1_epi64((long long)(~seed * (c + 1)));
        acc[c] = _mm512_setzero_si512();
    }
    for (uint64_t r = 0; r < rounds; r++) {
        OPAQUE(a, "v");
        for (int c = 0; c < AVX512_CHAINS; c++)
            acc[c] = _mm512_add_epi64(acc[c], _mm512_popcnt_epi64(_mm512_xor_si512(a, w[c])));
    }
    uint64_t sum = 0;
    for (int c = 0; c < AVX512_CHAINS; c++) sum += (uint64_t)_mm512_reduce_add_epi64(acc[c]);
    return sum;
}
#endif

#ifdef __AVX2__
/* 31 rounds of at most 8 bits per byte lane fit a byte (31 * 8 = 248 < 256) before VPSADBW widens them. */
#define BYTE_ROUNDS 31
#define AVX2_CHAINS 4

static uint64_t loop_avx2(uint64_t rounds, uint64_t seed) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    __m256i a = _mm256_set1_epi64x((long long)seed), w[AVX2_CHAINS], total = _mm256_setzero_si256();
    for (int c = 0; c < AVX2_CHAINS; c++) w[c] = _mm256_set1_epi64x((long long)(~seed * (c + 1)));
    for (uint64_t r = 0; r < rounds; r += BYTE_ROUNDS) {
        __m256i bytes[AVX2_CHAINS];
        for (int c = 0; c < AVX2_CHAINS; c++) bytes[c] = _mm256_setzero_si256();
        for (int i = 0; i < BYTE_ROUNDS; i++) {
            OPAQUE(a, "x");
            for (int c = 0; c < AVX2_CHAINS; c++) {
                __m256i x = _mm256_xor_si256(a, w[c]);
                __m256i lo = _mm256_and_si256(x, low_nibbles);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
                bytes[c] = _mm256_add_epi8(bytes[c], _mm256_add_epi8(_mm256_shuffle_epi8(table, lo),
                                                                     _mm256_shuffle_epi8(table, hi)));
            }
        }
        for (int c = 0; c < AVX2_CHAINS; c++)
            total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes[c], _mm256_setzero_si256()));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, total);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

#define SCALAR_CHAINS 6

static uint64_t loop_scalar(uint64_t rounds, uint64_t seed) {
    uint64_t a = seed, w[SCALAR_CHAINS], acc[SCALAR_CHAINS];
    for (int c = 0; c < SCALAR_CHAINS; c++) {
        w[c] = ~seed * (c + 1);
        acc[c] = 0;
    }
    for (uint64_t r = 0; r < rounds; r++) {
        OPAQUE(a, "r");
        for (int c = 0; c < SCALAR_CHAINS; c++) acc[c] += (uint64_t)__builtin_popcountll(a ^ w[c]);
    }
    uint64_t sum = 0;
    for (int c = 0; c < SCALAR_CHAINS; c++) sum += acc[c];
    return sum;
}

#if defined(__AVX2__) && defined(__POPCNT__)
/* The vector loop's chains and the scalar loop's in one loop: on cores whose vector and integer units issue from
 * separate ports (AMD Zen), both run at once. */
#define MIXED_SCALAR_CHAINS 3

static uint64_t loop_avx2_scalar(uint64_t rounds, uint64_t seed) {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    __m256i a = _mm256_set1_epi64x((long long)seed), w[AVX2_CHAINS], total = _mm256_setzero_si256();
    uint64_t sa = seed, sw[MIXED_SCALAR_CHAINS], sacc[MIXED_SCALAR_CHAINS];
    for (int c = 0; c < AVX2_CHAINS; c++) w[c] = _mm256_set1_epi64x((long long)(~seed * (c + 1)));
    for (int c = 0; c < MIXED_SCALAR_CHAINS; c++) {
        sw[c] = ~seed * (c + 7);
        sacc[c] = 0;
    }
    for (uint64_t r = 0; r < rounds; r += BYTE_ROUNDS) {
        __m256i bytes[AVX2_CHAINS];
        for (int c = 0; c < AVX2_CHAINS; c++) bytes[c] = _mm256_setzero_si256();
        for (int i = 0; i < BYTE_ROUNDS; i++) {
            OPAQUE(a, "x");
            OPAQUE(sa, "r");
            for (int c = 0; c < AVX2_CHAINS; c++) {
                __m256i x = _mm256_xor_si256(a, w[c]);
                __m256i lo = _mm256_and_si256(x, low_nibbles);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
                bytes[c] = _mm256_add_epi8(bytes[c], _mm256_add_epi8(_mm256_shuffle_epi8(table, lo),
                                                                     _mm256_shuffle_epi8(table, hi)));
            }
            for (int c = 0; c < MIXED_SCALAR_CHAINS; c++) sacc[c] += (uint64_t)__builtin_popcountll(sa ^ sw[c]);
        }
        for (int c = 0; c < AVX2_CHAINS; c++)
            total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes[c], _mm256_setzero_si256()));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, total);
    uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (int c = 0; c < MIXED_SCALAR_CHAINS; c++) sum += sacc[c];
    return sum;
}
#endif

struct path {
    const char *name;
    uint64_t (*loop)(uint64_t rounds, uint64_t seed);
    uint64_t bits_per_round;
    uint64_t round_multiple; /* rounds must be a multiple of this */
};

static const struct path PATHS[] = {
#ifdef __AVX512VPOPCNTDQ__
    {"avx512-vpopcntq", loop_avx512, AVX512_CHAINS * 512, 1},
#endif
#ifdef __AVX2__
    {"avx2-pshufb", loop_avx2, AVX2_CHAINS * 256, BYTE_ROUNDS},
#endif
#if defined(__AVX2__) && defined(__POPCNT__)
    {"avx2-pshufb+scalar-popcnt", loop_avx2_scalar, AVX2_CHAINS * 256 + MIXED_SCALAR_CHAINS * 64, BYTE_ROUNDS},
#endif
#ifdef __POPCNT__
    {"scalar-popcnt", loop_scalar, SCALAR_CHAINS * 64, 1},
#else
    {"scalar", loop_scalar, SCALAR_CHAINS * 64, 1},
#endif
};
static const int NPATHS = sizeof(PATHS) / sizeof(PATHS[0]);

int main(int argc, char **argv) {
    const char *want = argc > 1 ? argv[1] : PATHS[0].name;
    double seconds = argc > 2 ? atof(argv[2]) : 0.2;
    int trials = argc > 3 ? atoi(argv[3]) : 5;
    if (strcmp(want, "list") == 0) {
        for (int p = 0; p < NPATHS; p++) printf("%s\n", PATHS[p].name);
        return 0;
    }
    const struct path *path = NULL;
    for (int p = 0; p < NPATHS; p++)
        if (strcmp(want, PATHS[p].name) == 0) path = &PATHS[p];
    if (path == NULL || seconds <= 0 || trials < 1) {
        fprintf(stderr, "usage: %s [list | PATH [SECONDS [TRIALS]]]; PATH compiled in:", argv[0]);
        for (int p = 0; p < NPATHS; p++) fprintf(stderr, " %s", PATHS[p].name);
        fprintf(stderr, "\n");
        return 2;
    }
    uint64_t seed = (uint64_t)argc * 0x9e3779b97f4a7c15ull, checksum = 0;
    /* Calibrate: double the rounds until one trial takes about a tenth of the wanted time. */
    uint64_t rounds = 1024 * path->round_multiple;
    for (;;) {
        double start = now();
        checksum += path->loop(rounds, seed);
        if (now() - start > seconds / 10) break;
        rounds *= 2;
    }
    rounds = (uint64_t)(rounds * 10.0);
    rounds -= rounds % path->round_multiple;
    for (int t = 0; t < trials; t++) {
        double start = now();
        checksum += path->loop(rounds, seed + t);
        double elapsed = now() - start;
        printf("%s %llu %.9f\n", path->name, (unsigned long long)(rounds * path->bits_per_round), elapsed);
    }
    printf("checksum %llu\n", (unsigned long long)checksum);
    return 0;
}
