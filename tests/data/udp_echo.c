/* A UDP echo server for the e2e tests (busybox has no UDP server):
 * binds 0.0.0.0:PORT, prints "udp-ready", then answers every datagram with
 * "echo:" followed by the datagram. Built static by the test. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	char buf[2048];
	int s;

	if (argc != 2) {
		fprintf(stderr, "usage: udp_echo PORT\n");
		return 2;
	}
	a.sin_port = htons((unsigned short)atoi(argv[1]));
	s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
		perror("udp_echo: bind");
		return 1;
	}
	printf("udp-ready\n");
	fflush(stdout);
	memcpy(buf, "echo:", 5);
	for (;;) {
		struct sockaddr_in from;
		socklen_t len = sizeof(from);
		ssize_t n = recvfrom(s, buf + 5, sizeof(buf) - 5, 0,
				     (struct sockaddr *)&from, &len);
		if (n < 0)
			continue;
		sendto(s, buf, (size_t)n + 5, 0, (struct sockaddr *)&from, len);
	}
}
