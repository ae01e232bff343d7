/* Small probes the hole tests (tests/holes.rs) run inside pods:
 *
 *   probe fds [accept] [-- CMD...]  the fds open at start ("fds: 0 1 2"),
 *                                   LISTEN_* vs our pid; with accept, take
 *                                   one connection on fd 3 and print what
 *                                   it sent; then exec CMD if given
 *   probe tty                       isatty(0/1/2) and TIOCSTI on 0, 1, 2
 *                                   and /dev/tty ("ok" or the errno name)
 *   probe alloc MIB                 allocate and touch MIB MiB
 *   probe iouring                   io_uring_setup's verdict
 *   probe raw                       socket(AF_INET, SOCK_RAW)'s verdict
 *   probe open PATH [r|w]           open(2)'s verdict
 *   probe hijack KEY=VALUE...       race `berth exec` (see hijack() below)
 *
 * Static (musl-gcc), no linux/ headers. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
#define N(x) case x: return #x;
        N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(EBADF) N(EAGAIN) N(ENOMEM)
        N(EACCES) N(EFAULT) N(EBUSY) N(EEXIST) N(ENODEV) N(ENOTDIR) N(EISDIR) N(EINVAL)
        N(ENOTTY) N(ETXTBSY) N(ENOSPC) N(EROFS) N(ENOSYS) N(EAFNOSUPPORT) N(EOPNOTSUPP)
        N(EPROTONOSUPPORT)
#undef N
    }
    static char buf[32];
    snprintf(buf, sizeof buf, "errno %d", e);
    return buf;
}

static int fds(int argc, char **argv) {
    /* First, before opening anything. */
    char out[2048] = "fds:";
    size_t n = strlen(out);
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        printf("fds: cannot list /proc/self/fd: %s\n", ename(errno));
        return 1;
    }
    int list[256], count = 0;
    struct dirent *e;
    while ((e = readdir(d)) && count < 256) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd != dirfd(d)) list[count++] = fd;
    }
    closedir(d);
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++)
            if (list[j] < list[i]) {
                int t = list[i];
                list[i] = list[j];
                list[j] = t;
            }
    for (int i = 0; i < count; i++) {
        n += snprintf(out + n, sizeof out - n, " %d", list[i]);
        if (list[i] > 2) {
            char link[64], target[256] = "?";
            snprintf(link, sizeof link, "/proc/self/fd/%d", list[i]);
            ssize_t l = readlink(link, target, sizeof target - 1);
            if (l >= 0) target[l] = 0;
            n += snprintf(out + n, sizeof out - n, "(%s)", target);
        }
    }
    printf("%s\n", out);
    const char *lf = getenv("LISTEN_FDS"), *lp = getenv("LISTEN_PID");
    if (lf || lp)
        printf("listen: LISTEN_FDS=%s LISTEN_PID=%s own=%s\n", lf ? lf : "-", lp ? lp : "-",
               lp && atoi(lp) == (int)getpid() ? "yes" : "no");
    int i = 2;
    if (i < argc && !strcmp(argv[i], "accept")) {
        i++;
        int c = accept(3, NULL, NULL);
        if (c < 0) {
            printf("accept: %s\n", ename(errno));
        } else {
            char b[128];
            ssize_t r = read(c, b, sizeof b - 1);
            b[r > 0 ? r : 0] = 0;
            printf("accepted: %s\n", b);
            close(c);
        }
    }
    fflush(stdout);
    if (i < argc && !strcmp(argv[i], "--") && i + 1 < argc) {
        execvp(argv[i + 1], argv + i + 1);
        printf("exec %s: %s\n", argv[i + 1], ename(errno));
        return 127;
    }
    return 0;
}

static int tty(void) {
    printf("isatty: 0=%d 1=%d 2=%d\n", isatty(0), isatty(1), isatty(2));
    char c = 'Z';
    printf("tiocsti:");
    for (int fd = 0; fd <= 2; fd++)
        printf(" fd%d=%s", fd, ioctl(fd, TIOCSTI, &c) == 0 ? "ok" : ename(errno));
    int t = open("/dev/tty", O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (t < 0)
        printf(" tty=%s", ename(errno));
    else
        printf(" tty=%s", ioctl(t, TIOCSTI, &c) == 0 ? "ok" : ename(errno));
    printf("\n");
    return 0;
}

/* In 1 MiB steps, each touched: a VM's kernel that refuses one big
 * allocation (overcommit heuristics) still runs out of memory, as a
 * cgroup does. */
static int alloc(const char *mib) {
    long n = atol(mib);
    for (long i = 0; i < n; i++) {
        char *p = malloc(1 << 20);
        if (!p) {
            printf("alloc: malloc failed after %ld MiB\n", i);
            return 1;
        }
        for (size_t k = 0; k < (1 << 20); k += 4096) p[k] = 1;
    }
    printf("allocated %s MiB\n", mib);
    return 0;
}

static int iouring(void) {
    uint32_t params[30] = {0};
    long r = syscall(SYS_io_uring_setup, 4, params);
    printf("io_uring_setup: %s\n", r >= 0 ? "ok" : ename(errno));
    return 0;
}

static int raw(void) {
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    printf("raw: %s\n", s >= 0 ? "ok" : ename(errno));
    return 0;
}

static int open_probe(const char *path, const char *mode) {
    int flags = mode && mode[0] == 'w' ? O_WRONLY : O_RDONLY;
    int fd = open(path, flags | O_NOCTTY | O_NONBLOCK);
    printf("open %s: %s\n", path, fd >= 0 ? "ok" : ename(errno));
    return 0;
}

/* ---- hijack: the runc CVE-2019-5736 family, as a race.
 *
 * While the test runs `berth exec POD -- true` over and over, watch the
 * pod's /proc for new processes. A process `berth exec` forks is in the pod
 * between its fork and its execve, still running the host's stage1 binary
 * with the host's environment and all its capabilities. Count the windows
 * seen (comm "berth-stage1-ns", or the fd number a sealed memfd copy runs
 * as) and every way in: /proc/PID/exe opening the host binary (compared by
 * device and inode with host_dev/host_ino), /proc/PID/environ showing the
 * host's `marker`, /proc/PID/mem opening, ptrace attaching (and whether the
 * attached process held CAP_SYS_ADMIN). Runs until `min` windows were seen
 * or `secs` seconds passed; prints one summary line and the first hits. */

static char comm_of(int pid, char *buf, size_t n) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/comm", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    if (r <= 0) return 0;
    buf[r] = 0;
    if (buf[r - 1] == '\n') buf[r - 1] = 0;
    return 1;
}

static int is_window(const char *comm) {
    if (!strncmp(comm, "berth-stage1", 12) || !strncmp(comm, "memfd", 5)) return 1;
    if (!comm[0]) return 0;
    for (const char *c = comm; *c; c++)
        if (*c < '0' || *c > '9') return 0;
    return 1;
}

static int cap_sys_admin(int pid) {
    char p[64], b[4096];
    snprintf(p, sizeof p, "/proc/%d/status", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t r = read(fd, b, sizeof b - 1);
    close(fd);
    if (r <= 0) return 0;
    b[r] = 0;
    char *c = strstr(b, "CapEff:");
    if (!c) return 0;
    unsigned long long v = strtoull(c + 7, NULL, 16);
    return (v >> 21) & 1;
}

static int hijack(int argc, char **argv) {
    int secs = 30, min = 20;
    unsigned long long host_dev = 0, host_ino = 0;
    const char *marker = "BERTH_HIJACK_MARKER=";
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "secs=", 5)) secs = atoi(argv[i] + 5);
        if (!strncmp(argv[i], "min=", 4)) min = atoi(argv[i] + 4);
        if (!strncmp(argv[i], "host_dev=", 9)) host_dev = strtoull(argv[i] + 9, NULL, 10);
        if (!strncmp(argv[i], "host_ino=", 9)) host_ino = strtoull(argv[i] + 9, NULL, 10);
        if (!strncmp(argv[i], "marker=", 7)) marker = argv[i] + 7;
    }
    static unsigned char seen[1 << 19]; /* pids < 4M */
    int self = getpid();
    int windows = 0, exe_host = 0, environ_leak = 0, mem_open = 0, attached = 0,
        privileged = 0, procs = 0;
    char hits[2048] = "";
    size_t hn = 0;
#define HIT(...)                                                                  \
    do {                                                                          \
        if (hn < sizeof hits - 200) hn += snprintf(hits + hn, sizeof hits - hn, __VA_ARGS__); \
    } while (0)
    time_t end = time(NULL) + secs;
    /* Mark what runs already (ourselves, the app). */
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid > 0 && pid < (1 << 22)) seen[pid >> 3] |= 1 << (pid & 7);
    }
    if (d) closedir(d);
    printf("hijack: watching\n");
    fflush(stdout);
    while (time(NULL) < end && windows < min) {
        d = opendir("/proc");
        while (d && (e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid >= (1 << 22) || pid == self) continue;
            if (seen[pid >> 3] & (1 << (pid & 7))) continue;
            seen[pid >> 3] |= 1 << (pid & 7);
            procs++;
            char comm[64] = "", p[64];
            comm_of(pid, comm, sizeof comm);
            int win = is_window(comm);
            windows += win;
            /* exe: the host's binary? */
            snprintf(p, sizeof p, "/proc/%d/exe", pid);
            int fd = open(p, O_RDONLY);
            if (fd >= 0) {
                struct stat st;
                if (fstat(fd, &st) == 0 && (unsigned long long)st.st_dev == host_dev &&
                    (unsigned long long)st.st_ino == host_ino) {
                    exe_host++;
                    HIT(" [pid %d (%s): /proc/PID/exe opened the host's stage1 binary]", pid, comm);
                }
                close(fd);
            }
            /* environ: the host's? */
            snprintf(p, sizeof p, "/proc/%d/environ", pid);
            fd = open(p, O_RDONLY);
            if (fd >= 0) {
                static char env[65536];
                ssize_t r = read(fd, env, sizeof env - 1);
                close(fd);
                if (r > 0) {
                    for (ssize_t k = 0; k < r; k++)
                        if (!env[k]) env[k] = '\n';
                    env[r] = 0;
                    if (strstr(env, marker)) {
                        environ_leak++;
                        HIT(" [pid %d (%s): read the host environment]", pid, comm);
                    }
                }
            }
            /* mem of a process still in the window */
            snprintf(p, sizeof p, "/proc/%d/mem", pid);
            fd = open(p, O_RDWR);
            if (fd >= 0) {
                char c2[64] = "";
                comm_of(pid, c2, sizeof c2);
                if (is_window(c2)) {
                    mem_open++;
                    HIT(" [pid %d (%s): opened /proc/PID/mem]", pid, c2);
                }
                close(fd);
            }
            /* ptrace: seize (no signal sent: an exec that wins the race
             * is not disturbed), look at what we hold, then stop it with
             * PTRACE_INTERRUPT and detach cleanly. */
            if (win && ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
                char c2[64] = "";
                comm_of(pid, c2, sizeof c2);
                if (is_window(c2)) {
                    attached++;
                    int adm = cap_sys_admin(pid);
                    privileged += adm;
                    HIT(" [pid %d (%s): ptrace-attached%s]", pid, c2,
                        adm ? ", it holds CAP_SYS_ADMIN" : "");
                }
                int st;
                if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) == 0) waitpid(pid, &st, __WALL);
                ptrace(PTRACE_DETACH, pid, 0, 0);
            }
        }
        if (d) closedir(d);
    }
    printf("hijack: procs=%d windows=%d exe_host=%d environ=%d mem=%d attached=%d privileged=%d%s\n",
           procs, windows, exe_host, environ_leak, mem_open, attached, privileged, hits);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: probe fds|tty|alloc|iouring|raw|open|hijack ...\n");
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "fds")) return fds(argc, argv);
    if (!strcmp(c, "tty")) return tty();
    if (!strcmp(c, "alloc") && argc > 2) return alloc(argv[2]);
    if (!strcmp(c, "iouring")) return iouring();
    if (!strcmp(c, "raw")) return raw();
    if (!strcmp(c, "open") && argc > 2) return open_probe(argv[2], argc > 3 ? argv[3] : NULL);
    if (!strcmp(c, "hijack")) return hijack(argc, argv);
    fprintf(stderr, "probe: unknown command %s\n", c);
    return 2;
}
