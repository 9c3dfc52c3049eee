"""Talks to one FTP server and saves each raw reply, with a manifest, for the protocol tests.

Usage: talk.py HOST PORT OUTDIR SERVERNAME [greeting-only]. With greeting-only it saves
whatever arrives in the first second, however many replies that is. Reply grouping here is
written independently of src/protocol (RFC 959 4.2), so the manifest is a second opinion
the tests compare against.
"""
import json
import os
import re
import socket
import sys
import time

host, port, outdir, server = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
greeting_only = sys.argv[5:] == ['greeting-only']
os.makedirs(outdir, exist_ok=True)
ctl = socket.create_connection((host, port), 10)
pending = b''
manifest = []


def read_line():
    global pending
    while b'\n' not in pending:
        data = ctl.recv(4096)
        if not data:
            raise EOFError('control connection closed')
        pending += data
    line, pending = pending.split(b'\n', 1)
    return line + b'\n'


def read_reply():
    raw = [read_line()]
    first = raw[0].decode('latin1')
    code = first[:3]
    if first[3:4] == '-':
        while True:
            raw.append(read_line())
            text = raw[-1].decode('latin1')[:-1]
            text = text[:-1] if text.endswith('\r') else text
            if text == code or text.startswith(code + ' '):
                break
    return int(code), raw


def save(label, sent, replies):
    name = '%02d-%s.reply' % (len(manifest) + 1, label)
    with open(os.path.join(outdir, name), 'wb') as f:
        f.write(b''.join(line for _, raw in replies for line in raw))
    manifest.append({'file': name, 'sent': sent,
                     'replies': [{'code': code, 'lines': len(raw)} for code, raw in replies]})
    return b''.join(replies[0][1]).decode('latin1')


def command(label, line):
    if line is not None:
        ctl.sendall(line.encode('latin1') + b'\r\n')
    return save(label, line, [read_reply()])


def everything_for_a_second(label):
    global pending
    ctl.settimeout(0.2)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            data = ctl.recv(4096)
        except socket.timeout:
            continue
        if not data:
            break
        pending += data
    # Real servers do send lines that are no reply at all; they are recorded with code None.
    replies = []
    while pending:
        if re.match(rb'[1-5][0-9][0-9]([ -]|\r?\n)', pending):
            replies.append(read_reply())
        else:
            replies.append((None, [read_line()]))
    save(label, None, replies)


def data_port(reply):
    if reply.startswith('227'):
        m = re.search(r'(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)', reply)
        return int(m.group(5)) * 256 + int(m.group(6))
    m = re.search(r'\((.)\1\1(\d+)\1\)', reply)
    return int(m.group(2))


def transfer(label, passive, line):
    reply = command(passive, passive)
    if reply[0] != '2':
        return
    port = data_port(reply)
    data = socket.create_connection((host, port), 10)
    # The port a data connection really reached: what the tests expect parse227/229 to find.
    manifest[-1]['dataPort'] = port
    first = command(label + '-start', line)
    if first[0] == '1':
        while data.recv(65536):
            pass
        data.close()
        command(label + '-end', None)
    else:
        data.close()


if greeting_only:
    everything_for_a_second('greeting')
    command('QUIT', 'QUIT')
else:
    command('greeting', None)
    for label, line in [
        ('before-login', 'PWD'),
        ('USER', 'USER anonymous'),
        ('PASS', 'PASS capture@example.org'),
        ('SYST', 'SYST'),
        ('FEAT', 'FEAT'),
        ('HELP', 'HELP'),
        ('HELP-arg', 'HELP RETR'),
        ('STAT', 'STAT'),
        ('PWD', 'PWD'),
        ('TYPE', 'TYPE I'),
    ]:
        command(label, line)
    transfer('LIST', 'PASV', 'LIST')
    transfer('NLST', 'EPSV', 'NLST')
    transfer('RETR', 'PASV', 'RETR pub/hello.txt')
    for label, line in [
        ('RETR-missing', 'RETR no-such-file'),
        ('CWD-missing', 'CWD no-such-dir'),
        ('STAT-dir', 'STAT .'),
        ('PORT-bad', 'PORT 1,2,3'),
        ('EPRT-bad-family', 'EPRT |3|::1|5000|'),
        ('EPSV-bad-family', 'EPSV 3'),
        ('unknown', 'XYZZY'),
        ('EPSV-ALL', 'EPSV ALL'),
        ('PASV-after-EPSV-ALL', 'PASV'),
        ('QUIT', 'QUIT'),
    ]:
        command(label, line)
ctl.close()

with open(os.path.join(outdir, 'manifest.json'), 'w') as f:
    f.write('{"server": %s,\n "note": "captured by scripts/capture-replies from a real server on loopback",\n'
            ' "exchanges": [\n  %s\n ]}\n' % (json.dumps(server), ',\n  '.join(json.dumps(e) for e in manifest)))
