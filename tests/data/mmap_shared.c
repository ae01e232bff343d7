/* Writes argv[2] into file argv[1] through a MAP_SHARED mapping (as journald
 * and systemd do), msyncs, unmaps, then reads the file back with read(2) and
 * prints what it holds. Built static by the e2e test and run inside pods. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: mmap_shared FILE TEXT\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror("open"); return 1; }
    if (ftruncate(fd, 4096)) { perror("ftruncate"); return 1; }
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    strncpy(p, argv[2], 4095);
    if (msync(p, 4096, MS_SYNC)) { perror("msync"); return 1; }
    if (munmap(p, 4096)) { perror("munmap"); return 1; }
    close(fd);
    char buf[128] = {0};
    fd = open(argv[1], O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf - 1) < 0) { perror("read back"); return 1; }
    printf("%s\n", buf);
    return 0;
}
