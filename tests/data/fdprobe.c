/* fdprobe FD NAME: openat(FD, NAME, O_RDONLY) and print the file, or
 * "openat: <error>" and exit 1. tests/mac.rs passes FD in with
 * --preserve-fds: an O_PATH descriptor of a host directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fdprobe FD NAME\n");
        return 2;
    }
    int fd = openat(atoi(argv[1]), argv[2], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("openat: %s\n", strerror(errno));
        return 1;
    }
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    return 0;
}
