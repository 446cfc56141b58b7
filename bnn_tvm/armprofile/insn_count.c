/* insn_count: a QEMU TCG plugin that counts executed guest instructions per translation block.
 *
 *   qemu-aarch64 -plugin libinsn_count.so,out=COUNTS[,per_vcpu=1] PROGRAM...
 *
 * Every executed translation block adds its instruction count: exact, deterministic for a
 * deterministic guest. By default the count is an inline add (no helper call: cheap, but not
 * atomic, so guest threads running at once can lose counts); with per_vcpu=1 a callback counts
 * each vCPU (each guest thread) in a slot of its own, exact under threads and slower.
 *
 * Output, written at exit, one line per (block address, size) that ran:
 *   tb VADDR_HEX NINSNS EXECS_VCPU0 EXECS_VCPU1 ...
 *
 * Debian ships no QEMU headers: the part of the plugin API (version 1, QEMU 7.2) used here is
 * declared below, as QEMU's include/qemu/qemu-plugin.h declares it.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU plugin API v1 (include/qemu/qemu-plugin.h, QEMU 7.2) ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
/* ---- end of the API declarations ---- */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

#define MAX_VCPUS 64
#define BUCKETS (1u << 18)

typedef struct Block {
    uint64_t vaddr;
    uint32_t n_insns;
    struct Block *next;
    uint64_t execs[MAX_VCPUS]; /* inline mode counts in execs[0] */
} Block;

static Block **table;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static char out_path[4096] = "insn_count.out";
static bool per_vcpu;
static unsigned vcpus_seen = 1;

/* Translation can happen again for the same code (e.g. after the cache fills): one record per (vaddr, size). */
static Block *block_for(uint64_t vaddr, uint32_t n_insns)
{
    size_t bucket = (size_t)((vaddr >> 2) ^ (vaddr >> 20) ^ n_insns) & (BUCKETS - 1);
    for (Block *b = table[bucket]; b; b = b->next) {
        if (b->vaddr == vaddr && b->n_insns == n_insns) {
            return b;
        }
    }
    Block *b = calloc(1, sizeof(Block));
    b->vaddr = vaddr;
    b->n_insns = n_insns;
    b->next = table[bucket];
    table[bucket] = b;
    return b;
}

static void count_on_vcpu(unsigned int vcpu, void *userdata)
{
    Block *b = userdata;
    unsigned slot = vcpu < MAX_VCPUS ? vcpu : MAX_VCPUS - 1;
    b->execs[slot]++; /* only this vCPU writes this slot */
    if (slot + 1 > vcpus_seen) {
        vcpus_seen = slot + 1; /* monotonic, read only at exit */
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    pthread_mutex_lock(&table_lock);
    Block *b = block_for(qemu_plugin_tb_vaddr(tb), (uint32_t)qemu_plugin_tb_n_insns(tb));
    pthread_mutex_unlock(&table_lock);
    if (per_vcpu) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, count_on_vcpu, QEMU_PLUGIN_CB_NO_REGS, b);
    } else {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->execs[0], 1);
    }
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    FILE *out = fopen(out_path, "w");
    if (out == NULL) {
        perror(out_path);
        return;
    }
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        for (Block *b = table[bucket]; b; b = b->next) {
            fprintf(out, "tb %" PRIx64 " %" PRIu32, b->vaddr, b->n_insns);
            for (unsigned v = 0; v < vcpus_seen; v++) {
                fprintf(out, " %" PRIu64, b->execs[v]);
            }
            fputc('\n', out);
        }
    }
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof(out_path)) {
            strcpy(out_path, argv[i] + 4);
        } else if (strcmp(argv[i], "per_vcpu=1") == 0) {
            per_vcpu = true;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (expected out=PATH, per_vcpu=1)\n", argv[i]);
            return -1;
        }
    }
    table = calloc(BUCKETS, sizeof(Block *));
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
