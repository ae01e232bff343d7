/* berth's escape suite: run inside a pod (as root, or as another user),
 * it tries to get out of the pod or to interfere with the host and other
 * pods, one attempt per line:
 *
 *     <name>: blocked (<how>)
 *     <name>: ESCAPED (<what>)
 *
 * Every attempt runs in a forked child (a crash or a hang is reported as
 * `<name>: ERROR (...)`, which the test counts as a failure). Nothing here
 * does harm when it succeeds: a door that opens is reported, not used (no
 * write to the host's console, sysrq or core_pattern; kill with signal 0).
 *
 * Arguments, `key=value`, all optional; a lone `--` ends them and the rest
 * is exec'd once every attempt has run (a pod app then stays up):
 *   stage1=ns|kvm      what /proc/1 is (kvm: guest-init, an in-VM file)
 *   ro=DIR             a read-only volume
 *   other_upper=PATH   host path of another pod's overlay upper directory
 *   other_marker=NAME  a file in that upper directory (so in that pod's /)
 *   other_pid=N        that pod's leader on the host
 *   host_pid=N         a host process (the test)
 *   host_marker=NAME   a file in the host's /
 *   run_socket=NAME    a listening unix socket in the host's /run
 *   abstract=NAME      a listening abstract unix socket of the host
 *   tcp_port=N         a TCP listener on the host's 127.0.0.1
 *
 * Built static with musl-gcc: no linux/ headers, so the few kernel ABI
 * constants used are defined below. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
struct sockaddr_vm_ {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_zero[4];
};
#define KEY_SPEC_SESSION_KEYRING (-3)
#define KEY_SPEC_PROCESS_KEYRING (-2)
#define KEYCTL_GET_KEYRING_ID 0
#define BPF_MAP_CREATE 0
#define BPF_MAP_TYPE_ARRAY 2
#define OPEN_TREE_CLONE 1
#define LINUX_REBOOT_MAGIC1 0xfee1dead
#define LINUX_REBOOT_MAGIC2 672274793
#define LINUX_REBOOT_CMD_CAD_OFF 0
#define SYSLOG_ACTION_READ_ALL 3
#define ETH_P_ALL_ 0x0003
/* berth_spec::kvm::{BOOT_MARK_PORT, STATUS_PORT} */
#define BOOT_MARK_PORT 0x0ef0
#define STATUS_PORT 0x0ef1

/* ------------------------------------------------------------ options -- */

static const char *opt_keys[] = {"stage1", "ro", "other_upper", "other_marker", "other_pid",
                                 "host_pid", "host_marker", "run_socket", "abstract",
                                 "tcp_port", NULL};
static const char *opt_vals[16];

static const char *opt(const char *key) {
    for (int i = 0; opt_keys[i]; i++)
        if (!strcmp(opt_keys[i], key)) return opt_vals[i];
    return NULL;
}

static int is_kvm(void) {
    const char *s = opt("stage1");
    return s && !strcmp(s, "kvm");
}

/* ------------------------------------------------------------ results -- */

static const char *attempt;  /* the running attempt's name */
static int report_fd = 1;    /* where its one line goes */
static char how[1024];       /* what the attempt saw so far */

static const char *ename(int e) {
    switch (e) {
#define N(x) case x: return #x;
        N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(E2BIG) N(EBADF) N(ECHILD)
        N(EAGAIN) N(ENOMEM) N(EACCES) N(EFAULT) N(EBUSY) N(EEXIST) N(EXDEV) N(ENODEV)
        N(ENOTDIR) N(EISDIR) N(EINVAL) N(ENFILE) N(EMFILE) N(ENOTTY) N(ETXTBSY) N(ENOSPC)
        N(EROFS) N(ENOSYS) N(ELOOP) N(ENOTSOCK) N(EPROTOTYPE) N(EPROTONOSUPPORT)
        N(ESOCKTNOSUPPORT) N(EOPNOTSUPP) N(EAFNOSUPPORT) N(EADDRNOTAVAIL) N(ENETDOWN)
        N(ENETUNREACH) N(ECONNRESET) N(ENOTCONN) N(ETIMEDOUT) N(ECONNREFUSED)
        N(EHOSTUNREACH) N(EALREADY) N(EINPROGRESS) N(ENOKEY) N(EKEYREVOKED) N(EMEDIUMTYPE)
        N(ENAMETOOLONG) N(ENOTEMPTY) N(ERANGE) N(EDOM) N(ESTALE) N(EOVERFLOW)
#undef N
    }
    static char buf[32];
    snprintf(buf, sizeof buf, "errno %d", e);
    return buf;
}
#define E() ename(errno)

/* Append to `how` ("; " between notes). */
static void note(const char *fmt, ...) {
    size_t n = strlen(how);
    if (n + 4 >= sizeof how) return;
    if (n) {
        strcpy(how + n, "; ");
        n += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(how + n, sizeof how - n, fmt, ap);
    va_end(ap);
}

static void finish(const char *verdict, const char *fmt, va_list ap) {
    char text[1024], line[1400];
    vsnprintf(text, sizeof text, fmt, ap);
    /* One line: no newline may sneak in from a path or a message. */
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    int n = snprintf(line, sizeof line, "%s: %s (%s)\n", attempt, verdict, text);
    if (n > (int)sizeof line - 1) {
        n = sizeof line - 1;
        line[n - 2] = ')';
        line[n - 1] = '\n';
    }
    (void)!write(report_fd, line, n);
    _exit(0);
}

/* End the attempt: the way out stayed shut. */
static void blocked(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    finish("blocked", fmt, ap);
}

/* End the attempt: it got through. */
static void escaped(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    finish("ESCAPED", fmt, ap);
}

/* blocked(how) */
static void blocked_how(void) { blocked("%s", how[0] ? how : "nothing reachable"); }

/* ------------------------------------------------------------ helpers -- */

/* Open each path for writing (never writes): escaped on the first that
 * opens; notes how the others failed (missing ones as ENOENT). */
static void open_each_for_writing(const char *const *paths) {
    for (int i = 0; paths[i]; i++) {
        int fd = open(paths[i], O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) escaped("%s opened for writing", paths[i]);
        note("%s %s", paths[i], E());
    }
}

/* Make a device node in `dir` and open it with `flags`. Returns 1 when the
 * node opened (then `what` says which); notes each failure. */
static int node_opens(const char *dir, mode_t type, unsigned maj, unsigned min, int flags,
                      char *what, size_t wn) {
    char path[256];
    snprintf(path, sizeof path, "%s/.escape-node-%d-%u-%u", dir, (int)getpid(), maj, min);
    unlink(path);
    if (mknod(path, type | 0600, makedev(maj, min)) != 0) {
        note("mknod %s/ %c %u:%u %s", dir, type == S_IFBLK ? 'b' : 'c', maj, min, E());
        return 0;
    }
    int fd = open(path, flags | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    int err = errno;
    unlink(path);
    if (fd >= 0) {
        snprintf(what, wn, "mknod %s %c %u:%u and open succeeded", dir,
                 type == S_IFBLK ? 'b' : 'c', maj, min);
        close(fd);
        return 1;
    }
    note("mknod in %s/ ok, open %c %u:%u %s", dir, type == S_IFBLK ? 'b' : 'c', maj, min,
         ename(err));
    return 0;
}

/* A device attempt: the existing node (if any), then mknod in /dev and /tmp. */
static void device_attempt(const char *existing, mode_t type, unsigned maj, unsigned min,
                           int flags) {
    char what[256];
    if (existing) {
        int fd = open(existing, flags | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) escaped("%s opened", existing);
        note("%s %s", existing, E());
    }
    const char *dirs[] = {"/dev", "/tmp", NULL};
    for (int i = 0; dirs[i]; i++)
        if (node_opens(dirs[i], type, maj, min, flags, what, sizeof what)) escaped("%s", what);
    blocked_how();
}

static int unix_connect(const char *path, int abstract) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    socklen_t len;
    if (abstract) {
        a.sun_path[0] = 0;
        strncpy(a.sun_path + 1, path, sizeof a.sun_path - 2);
        len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path);
    } else {
        strncpy(a.sun_path, path, sizeof a.sun_path - 1);
        len = sizeof a;
    }
    int r = connect(s, (struct sockaddr *)&a, len);
    int err = errno;
    close(s);
    errno = err;
    return r;
}

/* connect() with a timeout; 0 on success, -1 with errno. */
static int connect_timeout(int s, const struct sockaddr *a, socklen_t len, int ms) {
    int fl = fcntl(s, F_GETFL);
    fcntl(s, F_SETFL, fl | O_NONBLOCK);
    if (connect(s, a, len) == 0) return 0;
    if (errno != EINPROGRESS && errno != EAGAIN) return -1;
    struct pollfd p = {.fd = s, .events = POLLOUT};
    int n = poll(&p, 1, ms);
    if (n == 0) {
        errno = ETIMEDOUT;
        return -1;
    }
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* The fds open at start-up, before this program opened any (computed in
 * main, reported by the inherited-fds attempt). */
static char start_fds[1024];
static int start_fds_extra;

static void scan_start_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        snprintf(start_fds, sizeof start_fds, "cannot list /proc/self/fd: %s", E());
        start_fds_extra = -1;
        return;
    }
    struct dirent *e;
    size_t n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d) || fd <= 2) continue;
        char link[64], target[256] = "?";
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t l = readlink(link, target, sizeof target - 1);
        if (l >= 0) target[l] = 0;
        n += snprintf(start_fds + n, n < sizeof start_fds ? sizeof start_fds - n : 0,
                      "%sfd %d -> %s", start_fds_extra ? ", " : "", fd, target);
        start_fds_extra++;
    }
    closedir(d);
}

/* ----------------------------------------------------------- attempts -- */

static void a_sysrq(void) {
    const char *p[] = {"/proc/sysrq-trigger", NULL};
    open_each_for_writing(p);
    blocked_how();
}

static void a_core_pattern(void) {
    const char *p[] = {"/proc/sys/kernel/core_pattern", NULL};
    open_each_for_writing(p);
    blocked_how();
}

static void a_proc_sys(void) {
    const char *p[] = {"/proc/sys/kernel/modprobe", "/proc/sys/vm/drop_caches",
                       "/proc/sys/kernel/hostname", "/proc/sys/net/ipv4/ip_forward", NULL};
    open_each_for_writing(p);
    blocked_how();
}

static void a_selinux(void) {
    const char *p[] = {"/sys/fs/selinux/enforce", NULL};
    open_each_for_writing(p);
    blocked_how();
}

static void a_sys_write(void) {
    const char *p[] = {"/sys/kernel/uevent_helper", "/sys/kernel/mm/transparent_hugepage/enabled",
                       "/sys/class/net/lo/mtu", "/sys/power/state", NULL};
    open_each_for_writing(p);
    int fd = open("/sys/escape-new-file", O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) escaped("created /sys/escape-new-file");
    note("create in /sys %s", E());
    blocked_how();
}

static void a_ro_volume(void) {
    const char *ro = opt("ro");
    if (!ro) blocked("no ro= volume given");
    char p[512];
    snprintf(p, sizeof p, "%s/escape-new-file", ro);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        unlink(p);
        escaped("created %s", p);
    }
    note("create %s", E());
    snprintf(p, sizeof p, "%s/escape-dir", ro);
    if (mkdir(p, 0700) == 0) {
        rmdir(p);
        escaped("mkdir %s", p);
    }
    note("mkdir %s", E());
    if (mount(NULL, ro, NULL, MS_REMOUNT | MS_BIND, NULL) == 0)
        escaped("remounted %s read-write", ro);
    note("remount rw %s", E());
    blocked_how();
}

static void a_other_pod_files(void) {
    const char *up = opt("other_upper"), *m = opt("other_marker");
    if (!up || !m) blocked("no other pod given");
    char p[600];
    struct stat st;
    if (stat(up, &st) == 0) escaped("the other pod's upper dir %s is visible", up);
    note("stat %s %s", up, E());
    snprintf(p, sizeof p, "%s/%s", up, m);
    int fd = open(p, O_RDONLY);
    if (fd >= 0) escaped("opened %s", p);
    note("open marker %s", E());
    /* Through every visible process' root (another pod would show here). */
    DIR *d = opendir("/proc");
    struct dirent *e;
    int seen = 0;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
        snprintf(p, sizeof p, "/proc/%s/root/%s", e->d_name, m);
        seen++;
        if (access(p, F_OK) == 0) escaped("the other pod's file is reachable as %s", p);
    }
    if (d) closedir(d);
    note("not under /proc/*/root of %d visible processes", seen);
    blocked_how();
}

static void a_other_pod_pid(void) {
    const char *s = opt("other_pid"), *m = opt("other_marker");
    if (!s) blocked("no other pod given");
    int pid = atoi(s);
    if (kill(pid, 0) == 0) escaped("kill(%d, 0) succeeded: the other pod's leader is reachable", pid);
    note("kill(%d, 0) %s", pid, E());
    char p[300];
    snprintf(p, sizeof p, "/proc/%d/root/%s", pid, m ? m : "");
    if (access(p, F_OK) == 0) escaped("%s exists", p);
    note("%s %s", p, E());
    blocked_how();
}

static void a_host_pid(void) {
    const char *s = opt("host_pid");
    if (!s) blocked("no host pid given");
    int pid = atoi(s);
    if (kill(pid, 0) == 0) escaped("kill(%d, 0) succeeded: the host process can be signalled", pid);
    note("kill(%d, 0) %s", pid, E());
    char p[64];
    snprintf(p, sizeof p, "/proc/%d", pid);
    if (access(p, F_OK) == 0) escaped("%s is visible", p);
    note("%s %s", p, E());
    blocked_how();
}

static void a_host_run(void) {
    const char *sock = opt("run_socket");
    char p[300];
    if (sock) {
        snprintf(p, sizeof p, "/run/%s", sock);
        if (unix_connect(p, 0) == 0) escaped("connected to the host's %s", p);
        note("connect %s %s", p, E());
    }
    const char *known[] = {"/run/systemd/private", "/run/systemd/notify",
                           "/run/dbus/system_bus_socket", "/run/docker.sock",
                           "/run/containerd/containerd.sock", "/run/systemd/journal/stdout",
                           NULL};
    for (int i = 0; known[i]; i++) {
        if (unix_connect(known[i], 0) == 0) escaped("connected to %s", known[i]);
        note("%s %s", known[i], E());
    }
    blocked_how();
}

static void a_abstract(void) {
    const char *name = opt("abstract");
    if (!name) blocked("no abstract socket given");
    if (unix_connect(name, 1) == 0) escaped("connected to the host's abstract socket @%s", name);
    note("connect @%s %s", name, E());
    blocked_how();
}

static void a_host_tcp(void) {
    const char *port = opt("tcp_port");
    if (!port) blocked("no tcp port given");
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) blocked("socket %s", E());
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect_timeout(s, (struct sockaddr *)&a, sizeof a, 3000) == 0)
        escaped("connected to the host's 127.0.0.1:%s", port);
    note("connect 127.0.0.1:%s %s", port, E());
    blocked_how();
}

static void a_inherited_fds(void) {
    if (start_fds_extra < 0) escaped("%s", start_fds);
    if (start_fds_extra > 0) escaped("open at start: %s", start_fds);
    blocked("only fds 0, 1, 2 were open at start");
}

static void a_self_exe(void) {
    int fd = open("/proc/self/exe", O_WRONLY);
    if (fd >= 0) escaped("/proc/self/exe opened for writing");
    note("open /proc/self/exe for writing %s", E());
    blocked_how();
}

static void a_pid1_exe(void) {
    int fd = open("/proc/1/exe", O_WRONLY);
    if (fd >= 0) escaped("/proc/1/exe opened for writing");
    note("write %s", E());
    char target[256];
    ssize_t l = readlink("/proc/1/exe", target, sizeof target - 1);
    if (l >= 0) {
        target[l] = 0;
        note("readlink %s", target);
    } else {
        note("readlink %s", E());
    }
    fd = open("/proc/1/exe", O_RDONLY);
    if (fd >= 0) {
        if (!is_kvm()) escaped("/proc/1/exe (the host's stage1 binary) opened for reading");
        note("readable: guest-init's copy in the VM, no host file");
    } else {
        note("read %s", E());
    }
    blocked_how();
}

static void a_open_by_handle(void) {
    struct {
        unsigned int bytes;
        int type;
        unsigned char h[128];
    } fh = {.bytes = 128};
    int mnt = 0;
    if (syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &fh, &mnt, 0) != 0) {
        note("name_to_handle_at %s", E());
        /* The "shocker" handle: inode 2 of an ext4 root. */
        fh.bytes = 8;
        fh.type = 1;
        memset(fh.h, 0, sizeof fh.h);
        fh.h[0] = 2;
    }
    int root = open("/", O_RDONLY | O_DIRECTORY);
    int fd = syscall(SYS_open_by_handle_at, root, &fh, O_RDONLY);
    if (fd >= 0) escaped("open_by_handle_at opened a handle");
    note("open_by_handle_at %s", E());
    blocked_how();
}

/* Look for a writable release_agent (or notify_on_release) under `dir`. */
static void find_release_agent(const char *dir, int depth, int *found) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (!strcmp(e->d_name, "release_agent")) {
            (*found)++;
            int fd = open(p, O_WRONLY);
            if (fd >= 0) escaped("%s opened for writing", p);
            note("%s %s", p, E());
        } else if (e->d_type == DT_DIR && depth > 0) {
            find_release_agent(p, depth - 1, found);
        }
    }
    closedir(d);
}

static void a_release_agent(void) {
    const char *dir = "/tmp/.escape-cgroup";
    mkdir(dir, 0700);
    const char *opts[] = {"memory", "rdma", "none,name=escape", NULL};
    for (int i = 0; opts[i]; i++) {
        if (mount("cgroup", dir, "cgroup", 0, opts[i]) == 0) {
            int found = 0;
            find_release_agent(dir, 0, &found);
            umount2(dir, MNT_DETACH);
            escaped("mounted a cgroup v1 hierarchy (%s)", opts[i]);
        }
        note("mount cgroup -o %s %s", opts[i], E());
    }
    rmdir(dir);
    int found = 0;
    find_release_agent("/sys/fs/cgroup", 2, &found);
    note("%d release_agent files under /sys/fs/cgroup, none writable", found);
    blocked_how();
}

static void a_mknod_block(void) {
    char what[256];
    /* The host's (ns) or the VM's (kvm) block devices, as sysfs lists them,
     * plus loop0 and sda. */
    unsigned devs[16][2] = {{7, 0}, {8, 0}};
    int n = 2;
    DIR *d = opendir("/sys/dev/block");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < 16) {
        unsigned ma, mi;
        if (sscanf(e->d_name, "%u:%u", &ma, &mi) == 2) {
            devs[n][0] = ma;
            devs[n][1] = mi;
            n++;
        }
    }
    if (d) closedir(d);
    for (int i = 0; i < n; i++) {
        size_t mark = strlen(how);
        int opened = node_opens("/dev", S_IFBLK, devs[i][0], devs[i][1], O_RDONLY, what,
                                sizeof what) ||
                     node_opens("/tmp", S_IFBLK, devs[i][0], devs[i][1], O_RDONLY, what,
                                sizeof what);
        if (opened) escaped("%s", what);
        if (i >= 2) how[mark] = 0; /* keep the line short: sda and loop0 speak for all */
    }
    note("and %d more block devices from /sys/dev/block the same", n - 2);
    blocked_how();
}

static void a_dev_kvm(void) { device_attempt("/dev/kvm", S_IFCHR, 10, 232, O_RDWR); }
static void a_dev_kmsg(void) { device_attempt("/dev/kmsg", S_IFCHR, 1, 11, O_WRONLY); }
static void a_dev_mem(void) {
    char what[256];
    const char *ex[] = {"/dev/mem", "/dev/port", NULL};
    for (int i = 0; ex[i]; i++) {
        int fd = open(ex[i], O_RDONLY | O_CLOEXEC);
        if (fd >= 0) escaped("%s opened", ex[i]);
        note("%s %s", ex[i], E());
    }
    if (node_opens("/dev", S_IFCHR, 1, 1, O_RDONLY, what, sizeof what) ||
        node_opens("/tmp", S_IFCHR, 1, 1, O_RDONLY, what, sizeof what) ||
        node_opens("/dev", S_IFCHR, 1, 4, O_RDONLY, what, sizeof what))
        escaped("%s", what);
    blocked_how();
}
static void a_loop_control(void) {
    device_attempt("/dev/loop-control", S_IFCHR, 10, 237, O_RDWR);
}

/* The console: ns — c 5:1 is the host's console (ttyS0 here); kvm — the
 * VM's serial port, which the host stores in POD_DIR/console.log. Only
 * opened, never written. */
static void a_console(void) {
    char what[256];
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0)
        escaped("/dev/console opened for writing (%s)",
                is_kvm() ? "the VM's serial console, stored by the host in console.log"
                         : "the host's console");
    note("/dev/console %s", E());
    const char *dirs[] = {"/dev", "/tmp", NULL};
    for (int i = 0; dirs[i]; i++)
        if (node_opens(dirs[i], S_IFCHR, 5, 1, O_WRONLY, what, sizeof what))
            escaped("%s: %s", what,
                    is_kvm() ? "the VM's serial console, stored by the host in console.log"
                             : "the host's console");
    /* The serial port itself (kvm: ttyS0 is the console). */
    fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) escaped("/dev/ttyS0 opened for writing");
    note("/dev/ttyS0 %s", E());
    blocked_how();
}

/* Another pty than the pod's own: c 136:N made outside the pod's devpts. */
static void a_host_pty(void) {
    char what[256];
    for (unsigned i = 0; i < 3; i++)
        if (node_opens("/tmp", S_IFCHR, 136, i, O_RDWR, what, sizeof what))
            escaped("%s: a pty outside the pod's devpts", what);
    blocked_how();
}

static void a_unshare_userns(void) {
    if (unshare(CLONE_NEWUSER) == 0) escaped("unshare(CLONE_NEWUSER) succeeded");
    note("unshare(CLONE_NEWUSER) %s", E());
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0) escaped("unshare(NEWUSER|NEWNS) succeeded");
    note("unshare(NEWUSER|NEWNS) %s", E());
    if (unshare(CLONE_NEWNS) == 0) escaped("unshare(CLONE_NEWNS) succeeded");
    note("unshare(CLONE_NEWNS) %s", E());
    blocked_how();
}

static void a_clone_userns(void) {
    long r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) {
        waitpid(r, NULL, 0);
        escaped("clone(CLONE_NEWUSER) made a child");
    }
    note("clone(CLONE_NEWUSER) %s", E());
    struct {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    } args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
    r = syscall(SYS_clone3, &args, sizeof args);
    if (r == 0) _exit(0);
    if (r > 0) {
        waitpid(r, NULL, 0);
        escaped("clone3(CLONE_NEWUSER) made a child");
    }
    note("clone3 %s", E());
    blocked_how();
}

static void a_keyring(void) {
    long r = syscall(SYS_add_key, "user", "berth-escape", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (r >= 0) escaped("add_key made key %ld", r);
    note("add_key %s", E());
    r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    if (r >= 0) escaped("keyctl found the session keyring %ld", r);
    note("keyctl %s", E());
    r = syscall(SYS_request_key, "user", "berth-escape", NULL, 0);
    if (r >= 0) escaped("request_key found key %ld", r);
    note("request_key %s", E());
    blocked_how();
}

static void a_bpf(void) {
    uint32_t attr[32] = {BPF_MAP_TYPE_ARRAY, 4, 4, 1};
    long r = syscall(SYS_bpf, BPF_MAP_CREATE, attr, sizeof attr);
    if (r >= 0) escaped("bpf(BPF_MAP_CREATE) made map fd %ld", r);
    note("bpf %s", E());
    blocked_how();
}

static void a_perf(void) {
    uint32_t attr[32] = {0};
    attr[0] = 1;   /* PERF_TYPE_SOFTWARE */
    attr[1] = 112; /* size (PERF_ATTR_SIZE_VER5) */
    /* config 0 = PERF_COUNT_SW_CPU_CLOCK */
    long r = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
    if (r >= 0) escaped("perf_event_open gave fd %ld", r);
    note("perf_event_open %s", E());
    blocked_how();
}

static void a_userfaultfd(void) {
    long r = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (r >= 0) escaped("userfaultfd gave fd %ld", r);
    note("userfaultfd %s", E());
    blocked_how();
}

static void a_io_uring(void) {
    uint32_t params[30] = {0};
    long r = syscall(SYS_io_uring_setup, 4, params);
    if (r >= 0) escaped("io_uring_setup gave fd %ld", r);
    note("io_uring_setup %s", E());
    blocked_how();
}

static void a_mount_tmpfs(void) {
    const char *dir = "/tmp/.escape-mnt";
    mkdir(dir, 0700);
    if (mount("none", dir, "tmpfs", 0, NULL) == 0) {
        umount2(dir, MNT_DETACH);
        escaped("mounted a tmpfs");
    }
    note("mount tmpfs %s", E());
    if (mount("/", dir, NULL, MS_BIND | MS_REC, NULL) == 0) {
        umount2(dir, MNT_DETACH);
        escaped("bind-mounted /");
    }
    note("bind mount %s", E());
    long fs = syscall(SYS_fsopen, "tmpfs", 0);
    if (fs >= 0) escaped("fsopen(tmpfs) gave fd %ld", fs);
    note("fsopen %s", E());
    long t = syscall(SYS_open_tree, AT_FDCWD, "/", OPEN_TREE_CLONE);
    if (t >= 0) escaped("open_tree(OPEN_TREE_CLONE) gave fd %ld", t);
    note("open_tree %s", E());
    rmdir(dir);
    blocked_how();
}

static void a_mount_proc(void) {
    const char *dir = "/tmp/.escape-proc";
    mkdir(dir, 0700);
    if (mount("proc", dir, "proc", 0, NULL) == 0) {
        umount2(dir, MNT_DETACH);
        escaped("mounted a new proc (unmasked /proc/sys, sysrq-trigger)");
    }
    note("mount proc %s", E());
    if (mount("sysfs", dir, "sysfs", 0, NULL) == 0) {
        umount2(dir, MNT_DETACH);
        escaped("mounted a writable sysfs");
    }
    note("mount sysfs %s", E());
    rmdir(dir);
    blocked_how();
}

static void a_unmask(void) {
    const char *p[] = {"/proc/kcore", "/proc/sys", "/proc/sysrq-trigger", "/sys/firmware", NULL};
    for (int i = 0; p[i]; i++) {
        if (umount2(p[i], MNT_DETACH) == 0) escaped("unmounted the mask on %s", p[i]);
        note("umount %s %s", p[i], E());
    }
    blocked_how();
}

static void a_kexec(void) {
    if (syscall(SYS_kexec_load, 0, 0, NULL, 0) == 0) escaped("kexec_load succeeded");
    note("kexec_load %s", E());
    if (syscall(SYS_kexec_file_load, -1, -1, 0, "", 0) == 0) escaped("kexec_file_load succeeded");
    note("kexec_file_load %s", E());
    blocked_how();
}

static void a_module(void) {
    static char img[64];
    if (syscall(SYS_init_module, img, sizeof img, "") == 0) escaped("init_module succeeded");
    note("init_module %s", E());
    int fd = open("/dev/null", O_RDONLY);
    if (syscall(SYS_finit_module, fd, "", 0) == 0) escaped("finit_module succeeded");
    note("finit_module %s", E());
    if (syscall(SYS_delete_module, "berth_escape", O_NONBLOCK) == 0)
        escaped("delete_module succeeded");
    note("delete_module %s", E());
    blocked_how();
}

static void a_ptrace_pid1(void) {
    if (ptrace(PTRACE_ATTACH, 1, 0, 0) == 0) {
        ptrace(PTRACE_DETACH, 1, 0, 0);
        escaped("PTRACE_ATTACH to PID 1 succeeded");
    }
    note("PTRACE_ATTACH %s", E());
    if (ptrace(PTRACE_SEIZE, 1, 0, 0) == 0) {
        ptrace(PTRACE_DETACH, 1, 0, 0);
        escaped("PTRACE_SEIZE of PID 1 succeeded");
    }
    note("PTRACE_SEIZE %s", E());
    const char *files[] = {"/proc/1/mem", "/proc/1/environ", NULL};
    for (int i = 0; files[i]; i++) {
        int fd = open(files[i], O_RDONLY);
        if (fd >= 0) {
            char b[16];
            if (read(fd, b, sizeof b) > 0) escaped("read %s", files[i]);
            note("%s opens, reads %s", files[i], E());
        } else {
            note("%s %s", files[i], E());
        }
    }
    char t[256];
    if (readlink("/proc/1/root", t, sizeof t) >= 0 && access("/proc/1/root/.", R_OK) == 0 &&
        !is_kvm()) {
        /* ns: init's root is the pod's root anyway; listing it is no harm. */
        note("/proc/1/root readable (the pod's own root)");
    } else {
        note("/proc/1/root %s", E());
    }
    char buf[8];
    struct iovec l = {buf, sizeof buf}, r = {(void *)0x400000, sizeof buf};
    if (syscall(SYS_process_vm_readv, 1, &l, 1, &r, 1, 0) >= 0)
        escaped("process_vm_readv read PID 1's memory");
    note("process_vm_readv %s", E());
    long pfd = syscall(SYS_pidfd_open, 1, 0);
    if (pfd >= 0) {
        for (int fd = 0; fd < 16; fd++) {
            long got = syscall(SYS_pidfd_getfd, pfd, fd, 0);
            if (got >= 0) escaped("pidfd_getfd took fd %d of PID 1", fd);
        }
        note("pidfd_getfd %s", E());
    } else {
        note("pidfd_open %s", E());
    }
    blocked_how();
}

static void a_raw_socket(void) {
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (s >= 0) escaped("socket(AF_INET, SOCK_RAW) succeeded");
    note("AF_INET SOCK_RAW %s", E());
    s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL_));
    if (s >= 0) escaped("socket(AF_PACKET, SOCK_RAW) succeeded");
    note("AF_PACKET %s", E());
    blocked_how();
}

static void a_vsock(void) {
    const int types[] = {SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM};
    for (int t = 0; t < 3; t++) {
        int s = socket(AF_VSOCK, types[t] | SOCK_CLOEXEC, 0);
        if (s < 0) {
            note("socket(AF_VSOCK, %d) %s", types[t], E());
            continue;
        }
        close(s);
        /* A socket: nobody (no host service, no guest-init port) may answer.
         * CID 1 = local, 2 = host, 3 = the guest itself (guest-init's
         * exec port is 1025). */
        for (unsigned cid = 1; cid <= 3; cid++) {
            s = socket(AF_VSOCK, types[t] | SOCK_CLOEXEC, 0);
            struct sockaddr_vm_ a = {.svm_family = AF_VSOCK, .svm_port = 1025, .svm_cid = cid};
            if (connect_timeout(s, (struct sockaddr *)&a, sizeof a, 3000) == 0 &&
                types[t] != SOCK_DGRAM)
                escaped("connected to vsock CID %u port 1025", cid);
            note("vsock %d CID %u:1025 %s", types[t], cid, E());
            close(s);
        }
    }
    blocked_how();
}

static void a_setns(void) {
    const char *ns[] = {"mnt", "net", "pid", "uts", "ipc", "cgroup", "user", NULL};
    char p[64];
    for (int i = 0; ns[i]; i++) {
        snprintf(p, sizeof p, "/proc/1/ns/%s", ns[i]);
        int fd = open(p, O_RDONLY);
        if (fd < 0) {
            note("%s %s", p, E());
            snprintf(p, sizeof p, "/proc/self/ns/%s", ns[i]);
            fd = open(p, O_RDONLY);
        }
        if (fd < 0) continue;
        if (setns(fd, 0) == 0) escaped("setns(%s) succeeded", p);
        note("setns(%s) %s", p, E());
        close(fd);
    }
    blocked_how();
}

static void a_chroot(void) {
    const char *m = opt("host_marker");
    if (!m) blocked("no host marker given");
    char marker[300];
    snprintf(marker, sizeof marker, "/%s", m);
    if (access(marker, F_OK) == 0) escaped("the host's /%s is visible", m);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    mkdir("/tmp/.escape-jail", 0700);
    if (chroot("/tmp/.escape-jail") != 0) {
        note("chroot %s", E());
    } else {
        /* The classic: an fd of the old root, .. up from there, chroot(".") */
        if (fchdir(root) != 0) note("fchdir %s", E());
        for (int i = 0; i < 256; i++)
            if (chdir("..") != 0) break;
        if (chroot(".") != 0) note("chroot(.) %s", E());
        if (access(marker, F_OK) == 0) escaped("chroot breakout reached the host's /%s", m);
        note("chroot + chdir .. stays in the pod's root (no /%s)", m);
    }
    blocked_how();
}

static void a_hostname(void) {
    char old[256] = "";
    gethostname(old, sizeof old - 1);
    if (sethostname("escaped", 7) == 0) {
        sethostname(old, strlen(old));
        escaped("sethostname succeeded");
    }
    note("sethostname %s", E());
    if (setdomainname("escaped", 7) == 0) escaped("setdomainname succeeded");
    note("setdomainname %s", E());
    blocked_how();
}

static void a_time(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (settimeofday(&tv, NULL) == 0) escaped("settimeofday succeeded");
    note("settimeofday %s", E());
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (clock_settime(CLOCK_REALTIME, &ts) == 0) escaped("clock_settime succeeded");
    note("clock_settime %s", E());
    blocked_how();
}

static void a_iopl(void) {
    if (syscall(SYS_iopl, 3) == 0) escaped("iopl(3) succeeded");
    note("iopl(3) %s", E());
    if (syscall(SYS_ioperm, 0x80, 1, 1) == 0) escaped("ioperm(0x80) succeeded");
    note("ioperm %s", E());
    blocked_how();
}

/* I/O port access without asking: a process that inherited an I/O
 * permission bitmap (kvm: guest-init's, for berth's BOOT_MARK/STATUS ports)
 * can `in`/`out` there. Only reads, in a child, which faults when barred. */
#define FAULTED 42
static void on_fault(int sig) {
    (void)sig;
    _exit(FAULTED);
}

static void a_io_port(void) {
    const unsigned short ports[] = {BOOT_MARK_PORT, STATUS_PORT, 0x80};
    for (int i = 0; i < 3; i++) {
        pid_t c = fork();
        if (c == 0) {
            /* A handled fault leaves no "general protection fault" line in
             * the (kvm) console, which the e2e harness would read as the
             * PVM flake. */
            struct sigaction sa = {.sa_handler = on_fault};
            sigaction(SIGSEGV, &sa, NULL);
            sigaction(SIGBUS, &sa, NULL);
            unsigned char v;
            unsigned short port = ports[i];
            __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
            _exit(0);
        }
        int st = 0;
        waitpid(c, &st, 0);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            escaped("in from port 0x%x did not fault: the process holds I/O port permission",
                    ports[i]);
        /* (Named SIGSEGV, not "Segmentation fault": the e2e harness reads
         * that phrase as a crash.) */
        if (WIFEXITED(st) && WEXITSTATUS(st) == FAULTED)
            note("in 0x%x faults (SIGSEGV)", ports[i]);
        else
            note("in 0x%x: status 0x%x", ports[i], st);
    }
    blocked_how();
}

static void a_reboot(void) {
    /* CAD_OFF: harmless even where it is allowed. */
    if (syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF,
                NULL) == 0)
        escaped("reboot(CAD_OFF) succeeded");
    note("reboot %s", E());
    blocked_how();
}

static void a_swapon(void) {
    if (swapon("/dev/null", 0) == 0) escaped("swapon succeeded");
    note("swapon %s", E());
    if (swapoff("/dev/null") == 0) escaped("swapoff succeeded");
    note("swapoff %s", E());
    blocked_how();
}

static void a_tiocsti(void) {
    char c = ' ';
    for (int fd = 0; fd <= 2; fd++) {
        if (ioctl(fd, TIOCSTI, &c) == 0) escaped("TIOCSTI on fd %d injected input", fd);
        note("fd %d %s", fd, E());
    }
    int t = open("/dev/tty", O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (t >= 0) {
        if (ioctl(t, TIOCSTI, &c) == 0) escaped("TIOCSTI on /dev/tty injected input");
        note("/dev/tty TIOCSTI %s", E());
    } else {
        note("/dev/tty %s", E());
    }
    blocked_how();
}

static void a_kcore(void) {
    int fd = open("/proc/kcore", O_RDONLY);
    if (fd < 0) blocked("open %s", E());
    char b[64];
    ssize_t n = read(fd, b, sizeof b);
    if (n > 0) escaped("read %zd bytes of /proc/kcore", n);
    blocked("masked: reads %s", n == 0 ? "0 bytes" : E());
}

static void a_sys_firmware(void) {
    DIR *d = opendir("/sys/firmware");
    if (!d) blocked("opendir %s", E());
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') escaped("/sys/firmware lists %s", e->d_name);
    blocked("masked: empty");
}

static void a_dmesg(void) {
    char b[64];
    long r = syscall(SYS_syslog, SYSLOG_ACTION_READ_ALL, b, sizeof b);
    if (r > 0) escaped("syslog(READ_ALL) read %ld bytes of the kernel log", r);
    note("syslog %s", r == 0 ? "read 0 bytes" : E());
    blocked_how();
}

/* ------------------------------------------------------------- driver -- */

struct entry {
    const char *name;
    void (*fn)(void);
};

static const struct entry attempts[] = {
    {"sysrq-trigger", a_sysrq},
    {"core-pattern", a_core_pattern},
    {"proc-sys-write", a_proc_sys},
    {"selinux-enforce", a_selinux},
    {"sys-write", a_sys_write},
    {"ro-volume-write", a_ro_volume},
    {"other-pod-files", a_other_pod_files},
    {"other-pod-pid", a_other_pod_pid},
    {"host-pid-kill", a_host_pid},
    {"host-run-sockets", a_host_run},
    {"host-abstract-socket", a_abstract},
    {"host-loopback-tcp", a_host_tcp},
    {"inherited-fds", a_inherited_fds},
    {"proc-self-exe-write", a_self_exe},
    {"proc-1-exe", a_pid1_exe},
    {"open-by-handle-at", a_open_by_handle},
    {"cgroup-release-agent", a_release_agent},
    {"mknod-block", a_mknod_block},
    {"dev-kvm", a_dev_kvm},
    {"dev-kmsg", a_dev_kmsg},
    {"dev-mem", a_dev_mem},
    {"dev-loop-control", a_loop_control},
    {"console", a_console},
    {"foreign-pty", a_host_pty},
    {"unshare-userns", a_unshare_userns},
    {"clone-userns", a_clone_userns},
    {"keyring", a_keyring},
    {"bpf", a_bpf},
    {"perf-event-open", a_perf},
    {"userfaultfd", a_userfaultfd},
    {"io-uring", a_io_uring},
    {"mount-tmpfs", a_mount_tmpfs},
    {"mount-proc", a_mount_proc},
    {"unmask-proc", a_unmask},
    {"kexec", a_kexec},
    {"kernel-module", a_module},
    {"ptrace-pid1", a_ptrace_pid1},
    {"raw-socket", a_raw_socket},
    {"vsock", a_vsock},
    {"setns-pid1", a_setns},
    {"chroot-breakout", a_chroot},
    {"sethostname", a_hostname},
    {"set-time", a_time},
    {"iopl-ioperm", a_iopl},
    {"io-port-access", a_io_port},
    {"reboot", a_reboot},
    {"swapon", a_swapon},
    {"tiocsti", a_tiocsti},
    {"proc-kcore", a_kcore},
    {"sys-firmware", a_sys_firmware},
    {"dmesg", a_dmesg},
    {NULL, NULL},
};

/* Run one attempt in a child; print its line, or an ERROR line. */
static void run_attempt(const struct entry *a) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        printf("%s: ERROR (pipe: %s)\n", a->name, E());
        return;
    }
    pid_t c = fork();
    if (c < 0) {
        printf("%s: ERROR (fork: %s)\n", a->name, E());
        close(p[0]);
        close(p[1]);
        return;
    }
    if (c == 0) {
        close(p[0]);
        attempt = a->name;
        report_fd = p[1];
        how[0] = 0;
        alarm(300);
        a->fn();
        blocked_how(); /* not reached: every attempt ends itself */
    }
    close(p[1]);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char line[1500];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(p[0], line + n, sizeof line - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += r;
        if (n >= sizeof line - 1) break;
    }
    close(p[0]);
    int st = 0;
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) {}
    line[n] = 0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    if (ms > 2000) fprintf(stderr, "escape: %s took %ld ms\n", a->name, ms);
    if (n > 0 && line[n - 1] == '\n') {
        fputs(line, stdout);
    } else if (WIFSIGNALED(st)) {
        printf("%s: ERROR (the attempt was killed by signal %d%s)\n", a->name, WTERMSIG(st),
               WTERMSIG(st) == SIGALRM ? ", a timeout" : "");
    } else {
        printf("%s: ERROR (no verdict, exit status %d)\n", a->name, WEXITSTATUS(st));
    }
}

int main(int argc, char **argv) {
    /* First, before this program opens anything. */
    scan_start_fds();
    setvbuf(stdout, NULL, _IONBF, 0);
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        char *eq = strchr(argv[i], '=');
        int known = 0;
        for (int k = 0; eq && opt_keys[k]; k++)
            if (strlen(opt_keys[k]) == (size_t)(eq - argv[i]) &&
                !strncmp(opt_keys[k], argv[i], eq - argv[i])) {
                opt_vals[k] = eq + 1;
                known = 1;
            }
        if (!known) {
            fprintf(stderr, "escape: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    /* Keep the attempts' view stable: no signal from a terminal. */
    signal(SIGPIPE, SIG_IGN);
    int count = 0;
    for (const struct entry *a = attempts; a->name; a++, count++) run_attempt(a);
    printf("escape: %d attempts as uid %d\n", count, (int)getuid());
    if (i < argc) {
        execvp(argv[i], argv + i);
        fprintf(stderr, "escape: exec %s: %s\n", argv[i], strerror(errno));
        return 127;
    }
    return 0;
}
