/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A tiny KTAP producer for rkvm's selftests (kselftest style).
 *
 * A test program declares its cases with TEST(name) { ... } and lists them in main() with
 * ktap_run(); each case prints "ok N - name" or "not ok N - name", or "# SKIP reason". CHECK()
 * records a failure (with file:line, the expression and errno) and goes on; SKIP() ends the case.
 *
 * CHECK_ERRNO_WHY(call, want, "situation") is CHECK_ERRNO with the bad input described in words.
 * With RKVM_ERRNO_LOG set in the environment, each one that passed makes a diagnostic line
 * "# errno-log: suite<TAB>case<TAB>ENAME<TAB>situation<TAB>call", written when its case ends and
 * only if the whole case passed (not skipped, not failed), so the README's table of bad inputs
 * and their errnos (scripts/errno-table.py) lists only errnos a run verified. RKVM_ERRNO_LOG=1
 * prints the lines before the case's "ok" line; RKVM_ERRNO_LOG=/path appends them to that file,
 * which run_tests prints at the end with the console's printk level lowered (on a serial console
 * a kernel message can land inside a line of the tests' output).
 * CHECK_ERRNO without a description (racing situations) is never logged. A check made some other
 * way (in a child process, say) can call ktap_errno_log() itself once it passed.
 */
#ifndef RKVM_KTAP_H
#define RKVM_KTAP_H

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ktap_case {
	const char *name;
	void (*fn)(void);
};

static int ktap_failed_case;
static const char *ktap_skip_reason;
static char ktap_skip_buf[256] __attribute__((unused));
static int ktap_total_failed;
static const char *ktap_suite_name = "?", *ktap_case_name = "?";

/* The current case's passed CHECK_ERRNO_WHYs (RKVM_ERRNO_LOG), printed when it ends as passed. */
static char *ktap_errno_log_buf;
static size_t ktap_errno_log_len, ktap_errno_log_cap;
static int ktap_errno_log_lock;

static inline void ktap_errno_log(const char *call, int err, const char *why)
{
	static int on = -1;
	const char *name;
	char line[1024];
	int n;

	if (on < 0)
		on = getenv("RKVM_ERRNO_LOG") != NULL;
	if (!on || !why)
		return;
	name = strerrorname_np(err);
	n = snprintf(line, sizeof(line), "# errno-log: %s\t%s\t%s\t%s\t%s\n", ktap_suite_name,
		     ktap_case_name, name ? name : "?", why, call);
	if (n < 0 || n >= (int)sizeof(line))
		return;
	while (__atomic_exchange_n(&ktap_errno_log_lock, 1, __ATOMIC_ACQUIRE))
		;
	if (ktap_errno_log_len + n + 1 > ktap_errno_log_cap) {
		size_t cap = (ktap_errno_log_cap + n + 1) * 2;
		char *b = realloc(ktap_errno_log_buf, cap);

		if (b) {
			ktap_errno_log_buf = b;
			ktap_errno_log_cap = cap;
		}
	}
	if (ktap_errno_log_len + n + 1 <= ktap_errno_log_cap) {
		memcpy(ktap_errno_log_buf + ktap_errno_log_len, line, n + 1);
		ktap_errno_log_len += n;
	}
	__atomic_store_n(&ktap_errno_log_lock, 0, __ATOMIC_RELEASE);
}

#define CHECK(cond) do {							\
	int _e = errno;								\
	if (!(cond)) {								\
		printf("# %s:%d: CHECK(%s) failed (errno %d: %s)\n",		\
		       __FILE__, __LINE__, #cond, _e, strerror(_e));		\
		ktap_failed_case = 1;						\
	}									\
} while (0)

/* An ioctl-style call that must fail with -1 and the given errno; WHY (a string, or NULL) says
 * what is wrong with the input, for the README's errno table. */
#define CHECK_ERRNO_WHY(call, want, why) do {					\
	errno = 0;								\
	long _r = (long)(call);							\
	int _e = errno;								\
	if (_r != -1 || _e != (want)) {						\
		printf("# %s:%d: %s returned %ld errno %d (%s), wanted -1 errno %d (%s)\n", \
		       __FILE__, __LINE__, #call, _r, _e, strerror(_e), (want), strerror(want)); \
		ktap_failed_case = 1;						\
	} else {								\
		ktap_errno_log(#call, _e, (why));				\
	}									\
} while (0)

#define CHECK_ERRNO(call, want) CHECK_ERRNO_WHY(call, want, NULL)

#define SKIP(...) do {								\
	snprintf(ktap_skip_buf, sizeof(ktap_skip_buf), __VA_ARGS__);		\
	ktap_skip_reason = ktap_skip_buf;					\
	return;									\
} while (0)

#define TEST(name) static void name(void)
#define CASE(name) { #name, name }

/* Prints a diagnostic line. */
static inline void ktap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

/* Writes a passed case's errno-log lines: to stdout, or appended to the file RKVM_ERRNO_LOG
 * names (one write, so processes running at once do not mix their lines). */
static inline void ktap_errno_log_flush(void)
{
	const char *path = getenv("RKVM_ERRNO_LOG");
	int fd;

	if (!path || path[0] != '/') {
		fwrite(ktap_errno_log_buf, 1, ktap_errno_log_len, stdout);
		return;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, ktap_errno_log_buf, ktap_errno_log_len) != (ssize_t)ktap_errno_log_len)
		printf("# errno-log: cannot append to %s\n", path);
	if (fd >= 0)
		close(fd);
}

/* Runs the cases, prints the KTAP document, returns the exit status. */
static inline int ktap_selected(const char *name, int argc, char **argv)
{
	if (argc < 2)
		return 1;
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return 1;
	return 0;
}

/* Runs the cases (only those named on the command line, if any), prints the KTAP document,
 * returns the exit status. */
static inline int ktap_run(const char *suite, const struct ktap_case *cases, int n,
			   int argc, char **argv)
{
	printf("TAP version 13\n# %s\n1..%d\n", suite, n);
	ktap_suite_name = suite;
	for (int i = 0; i < n; i++) {
		ktap_failed_case = 0;
		ktap_skip_reason = NULL;
		ktap_case_name = cases[i].name;
		ktap_errno_log_len = 0;
		fflush(stdout);
		if (ktap_selected(cases[i].name, argc, argv))
			cases[i].fn();
		else
			ktap_skip_reason = "not selected on the command line";
		if (ktap_failed_case) {
			printf("not ok %d - %s\n", i + 1, cases[i].name);
			ktap_total_failed++;
		} else if (ktap_skip_reason) {
			printf("ok %d - %s # SKIP %s\n", i + 1, cases[i].name, ktap_skip_reason);
		} else {
			if (ktap_errno_log_buf && ktap_errno_log_len)
				ktap_errno_log_flush();
			printf("ok %d - %s\n", i + 1, cases[i].name);
		}
		fflush(stdout);
	}
	return ktap_total_failed ? 1 : 0;
}

#define KTAP_MAIN(suite, ...)							\
int main(int argc, char **argv)							\
{										\
	static const struct ktap_case cases[] = { __VA_ARGS__ };		\
	setvbuf(stdout, NULL, _IOLBF, 0);					\
	return ktap_run(suite, cases, sizeof(cases) / sizeof(cases[0]), argc, argv);	\
}

#endif
