/* SPDX-License-Identifier: GPL-2.0 */
/*
 * aios_scx.h - the one header every aios sched_ext scheduler includes.
 *
 * Why: sched_ext's kfuncs were renamed (6.13: scx_bpf_dispatch ->
 * scx_bpf_dsq_insert, scx_bpf_consume -> scx_bpf_dsq_move_to_local) and
 * changed signatures (6.19, 7.1).  Instead of guessing, `aios sched setup`
 * renders every kfunc prototype from the *target* kernel's BTF into
 * aios_kfuncs.h (with AIOS_HAVE_<name> markers); this header maps the old and
 * new spellings onto whatever that kernel has, so a scheduler written with
 * either spelling compiles for the kernel it will run on.
 *
 * Build (aios.sched_ext.build does this):
 *   clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -fms-extensions
 *         -Wno-microsoft-anon-tag -I<kernel dir> -I<libbpf include> -I<this dir>
 *
 * A scheduler must still define its license:
 *   char _license[] SEC("license") = "GPL";
 *
 * Conventions the loader and checks rely on:
 *   - one SCX_OPS_DEFINE(name_ops, .name = "name", ...) per object
 *     (a `.struct_ops.link` map of type struct sched_ext_ops);
 *   - tunables are declared with AIOS_TUNABLE (const volatile, in .rodata),
 *     so the loader can patch them in the object before loading;
 *   - the verifier patches .timeout_ms (the sched_ext watchdog) in the object
 *     so stalls are caught within seconds; do not rely on its value.
 */
#pragma once

#ifndef BPF_NO_KFUNC_PROTOTYPES
#define BPF_NO_KFUNC_PROTOTYPES /* newer bpftool vmlinux.h: we declare kfuncs ourselves */
#endif

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "aios_kfuncs.h"

/* ---------------------------------------------------------------- sections */

#define BPF_STRUCT_OPS(name, args...) \
	SEC("struct_ops/" #name) BPF_PROG(name, ##args)

/* Callbacks that may sleep (ops.init creating DSQs, init_task allocating). */
#define BPF_STRUCT_OPS_SLEEPABLE(name, args...) \
	SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

/* The scheduler itself: a struct_ops map with a link (unloads when the link goes). */
#define SCX_OPS_DEFINE(__name, ...) \
	SEC(".struct_ops.link") struct sched_ext_ops __name = { __VA_ARGS__, }

/* A tunable the loader can override before load (lives in .rodata). */
#define AIOS_TUNABLE(type, name, value) const volatile type name = value

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif

/* ------------------------------------------------- kfunc spelling compat */

#if !defined(AIOS_HAVE_scx_bpf_dsq_insert) && defined(AIOS_HAVE_scx_bpf_dispatch)
#define scx_bpf_dsq_insert scx_bpf_dispatch
#define AIOS_HAVE_scx_bpf_dsq_insert 1
#endif
#if !defined(AIOS_HAVE_scx_bpf_dispatch) && defined(AIOS_HAVE_scx_bpf_dsq_insert)
#define scx_bpf_dispatch scx_bpf_dsq_insert
#endif

#if !defined(AIOS_HAVE_scx_bpf_dsq_insert_vtime) && defined(AIOS_HAVE_scx_bpf_dispatch_vtime)
#define scx_bpf_dsq_insert_vtime scx_bpf_dispatch_vtime
#define AIOS_HAVE_scx_bpf_dsq_insert_vtime 1
#endif
#if !defined(AIOS_HAVE_scx_bpf_dispatch_vtime) && defined(AIOS_HAVE_scx_bpf_dsq_insert_vtime)
#define scx_bpf_dispatch_vtime scx_bpf_dsq_insert_vtime
#endif
/* 6.19+ may only have the args-struct form (__scx_bpf_dsq_insert_vtime). */
#if !defined(AIOS_HAVE_scx_bpf_dsq_insert_vtime) && defined(AIOS_HAVE___scx_bpf_dsq_insert_vtime)
static __always_inline void scx_bpf_dsq_insert_vtime(struct task_struct *p, u64 dsq_id, u64 slice,
						     u64 vtime, u64 enq_flags)
{
	struct scx_bpf_dsq_insert_vtime_args args = {
		.dsq_id = dsq_id, .slice = slice, .vtime = vtime, .enq_flags = enq_flags,
	};
	__scx_bpf_dsq_insert_vtime(p, &args);
}
#define scx_bpf_dispatch_vtime scx_bpf_dsq_insert_vtime
#define AIOS_HAVE_scx_bpf_dsq_insert_vtime 1
#endif

#if !defined(AIOS_HAVE_scx_bpf_dsq_move_to_local) && defined(AIOS_HAVE_scx_bpf_consume)
#define scx_bpf_dsq_move_to_local scx_bpf_consume
#define AIOS_HAVE_scx_bpf_dsq_move_to_local 1
#endif
#if !defined(AIOS_HAVE_scx_bpf_consume) && defined(AIOS_HAVE_scx_bpf_dsq_move_to_local)
#define scx_bpf_consume scx_bpf_dsq_move_to_local
#endif

#if !defined(AIOS_HAVE_scx_bpf_dsq_move) && defined(AIOS_HAVE_scx_bpf_dispatch_from_dsq)
#define scx_bpf_dsq_move scx_bpf_dispatch_from_dsq
#define scx_bpf_dsq_move_vtime scx_bpf_dispatch_vtime_from_dsq
#define scx_bpf_dsq_move_set_slice scx_bpf_dispatch_from_dsq_set_slice
#define scx_bpf_dsq_move_set_vtime scx_bpf_dispatch_from_dsq_set_vtime
#endif

/* scx_bpf_now() (6.14+) falls back to bpf_ktime_get_ns(). */
#if !defined(AIOS_HAVE_scx_bpf_now)
#define scx_bpf_now() bpf_ktime_get_ns()
#endif

/* ------------------------------------------------ formatted error / exit */

#define aios_bstr_preamble(fmt, args...)					\
	static char ___fmt[] = fmt;						\
	unsigned long long ___param[___bpf_narg(args)];				\
	_Pragma("GCC diagnostic push")						\
	_Pragma("GCC diagnostic ignored \"-Wint-conversion\"")			\
	___bpf_fill(___param, args);						\
	_Pragma("GCC diagnostic pop")

/* Abort the scheduler with a message: the kernel ejects it (exit kind SCX_EXIT_ERROR_BPF). */
#define scx_bpf_error(fmt, args...)						\
({										\
	aios_bstr_preamble(fmt, args)						\
	scx_bpf_error_bstr(___fmt, ___param, sizeof(___param));			\
})

/* Leave voluntarily with an exit code (SCX_EXIT_UNREG_BPF). */
#define scx_bpf_exit(code, fmt, args...)					\
({										\
	aios_bstr_preamble(fmt, args)						\
	scx_bpf_exit_bstr(code, ___fmt, ___param, sizeof(___param));		\
})

/* ------------------------------------------------------------ exit record */

/*
 * The exit record host mode reads after the scheduler is ejected
 * (in the guest the kernel's dmesg line carries the same facts):
 *
 *   AIOS_UEI_DEFINE(uei);
 *   void BPF_STRUCT_OPS(x_exit, struct scx_exit_info *ei) { AIOS_UEI_RECORD(uei, ei); }
 */
struct aios_exit_info {
	s32 kind;
	s64 exit_code;
	char reason[128];
	char msg[256];
};

#define AIOS_UEI_DEFINE(__name) struct aios_exit_info __name SEC(".data")

#define AIOS_UEI_RECORD(__uei, __ei) ({						\
	bpf_probe_read_kernel_str((__uei).reason, sizeof((__uei).reason), (__ei)->reason); \
	bpf_probe_read_kernel_str((__uei).msg, sizeof((__uei).msg), (__ei)->msg);	\
	(__uei).exit_code = (__ei)->exit_code;					\
	(__uei).kind = (__ei)->kind;						\
})

/* --------------------------------------------------------------- helpers */

/* Per-CPU counter bump in an ARRAY map of u64 (idx must be a constant or bounded). */
static __always_inline void aios_stat_inc(void *map, u32 idx)
{
	u64 *cnt = bpf_map_lookup_elem(map, &idx);
	if (cnt)
		(*cnt)++;
}

static __always_inline bool aios_is_kthread(const struct task_struct *p)
{
	return p->flags & 0x00200000; /* PF_KTHREAD (a #define, not in BTF) */
}
