/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A tiny KTAP producer for rkvm's selftests (kselftest style).
 *
 * A test program declares its cases with TEST(name) { ... } and lists them in main() with
 * ktap_run(); each case prints "ok N - name" or "not ok N - name", or "# SKIP reason". CHECK()
 * records a failure (with file:line, the expression and errno) and goes on; SKIP() ends the case.
 */
#ifndef RKVM_KTAP_H
#define RKVM_KTAP_H

#include <errno.h>
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

#define CHECK(cond) do {							\
	int _e = errno;								\
	if (!(cond)) {								\
		printf("# %s:%d: CHECK(%s) failed (errno %d: %s)\n",		\
		       __FILE__, __LINE__, #cond, _e, strerror(_e));		\
		ktap_failed_case = 1;						\
	}									\
} while (0)

/* An ioctl-style call that must fail with -1 and the given errno. */
#define CHECK_ERRNO(call, want) do {						\
	errno = 0;								\
	long _r = (long)(call);							\
	int _e = errno;								\
	if (_r != -1 || _e != (want)) {						\
		printf("# %s:%d: %s returned %ld errno %d (%s), wanted -1 errno %d (%s)\n", \
		       __FILE__, __LINE__, #call, _r, _e, strerror(_e), (want), strerror(want)); \
		ktap_failed_case = 1;						\
	}									\
} while (0)

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
	for (int i = 0; i < n; i++) {
		ktap_failed_case = 0;
		ktap_skip_reason = NULL;
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
