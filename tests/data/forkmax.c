/* Fork children until fork fails (or `max` are running); each child blocks
 * until the parent is gone. Prints "forked N" and, when fork failed, the
 * errno name. Used to see a pod's pids limit from inside. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int max = argc > 1 ? atoi(argv[1]) : 100;
    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    int n = 0, err = 0;
    for (; n < max; n++) {
        pid_t c = fork();
        if (c < 0) { err = errno; break; }
        if (c == 0) {
            char b;
            close(p[1]);
            /* EOF once the parent (the only writer) exits. */
            while (read(p[0], &b, 1) < 0 && errno == EINTR) {}
            _exit(0);
        }
    }
    printf("forked %d%s\n", n, err == EAGAIN ? " (EAGAIN)" : err ? " (other error)" : "");
    return 0;
}
