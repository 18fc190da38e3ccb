/* trivial.c - the bench's baseline for reads: a FastCGI responder that does nothing but
 * answer every request with the same bytes (a file read once), with libfcgi's accept loop in
 * a few processes, like the workers. The bench puts it behind the same nginx as the service.
 *
 *   trivial <host:port> <body file> <processes> */
#include <fcgiapp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static char body[1 << 20];
	FCGX_Request req;
	size_t len;
	FILE *f;
	int fd;

	if (argc != 4 || !(f = fopen(argv[2], "rb")))
		return 2;
	len = fread(body, 1, sizeof(body), f);
	fclose(f);
	FCGX_Init();
	if ((fd = FCGX_OpenSocket(argv[1], 1024)) < 0)
		return 1;
	for (int i = 1; i < atoi(argv[3]); i++)
		if (fork() == 0)
			break;
	FCGX_InitRequest(&req, fd, 0);
	while (FCGX_Accept_r(&req) >= 0) {
		char head[160];
		int n = snprintf(head, sizeof(head), "Status: 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
						     "Content-Length: %zu\r\n\r\n", len);
		FCGX_PutStr(head, n, req.out);
		FCGX_PutStr(body, (int)len, req.out);
		FCGX_Finish_r(&req);
	}
	return 0;
}
