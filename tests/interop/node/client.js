#!/usr/bin/env node
// An LwM2M 1.0 client built on npm's lwm2m-node-lib, for the gateway's interop tests.
//
//   node client.js HOST PORT ENDPOINT
//
// It creates /3/0 (Device) and /3303/0 (IPSO Temperature), registers with the
// gateway at HOST:PORT, and reports what happens on stdout, one event per line:
//
//   REGISTERED <location>
//   READ <path> <value>                    the library's read handler was called
//   WRITE <path> <value>                   the library's write handler was called
//   WRITE-RAW <path> cf=<n> hex=<payload>  the CoAP write request as it arrived
//   EXECUTE <path> args=<payload>          the library's execute handler was called
//   SET <path> <value>                     a value changed locally (observers are notified)
//   UNREGISTER-CODE <code>                 the code of the De-register response, as the library logs it
//   UNREGISTERED | UNREGISTER-ERROR <e>    the library's unregister callback
//   ERROR <message>
//
// Commands on stdin, one a line:
//   set <path> <value>     change a resource (an observed one sends a notification)
//   tick <path> <ms>       add 0.5 to a numeric resource every <ms> milliseconds
//   unregister             de-register
//   quit                   exit
//
// The library's own logs go to stderr.

'use strict';

const lwm2m = require('lwm2m-node-lib');
const logger = require('logops');
const readline = require('readline');
const { Writable } = require('stream');

const [host, port, endpoint] = process.argv.slice(2);
if (!host || !port || !endpoint) {
    console.error('usage: client.js HOST PORT ENDPOINT');
    process.exit(2);
}

function out(line) {
    process.stdout.write(line + '\n');
}

// The library logs the De-register response code at DEBUG; everything goes to
// stderr, and that one line is reported on stdout as well.
logger.setLevel('DEBUG');
logger.format = logger.formatters.pipe;
logger.setStream(new Writable({
    write(chunk, _enc, done) {
        const text = chunk.toString();
        const m = /Unregistration response code:\s*(\d\.\d\d)/.exec(text);
        if (m) {
            out('UNREGISTER-CODE ' + m[1]);
        }
        process.stderr.write(text, done);
    }
}));

const config = require('lwm2m-node-lib/config');
config.client.lifetime = '300';
config.client.logLevel = 'DEBUG';
// The library's sample configuration registers only the pre-standard numbers
// 1541..1544; the coap module then drops every request carrying a Content-Format
// it does not know (TLV 11542) without an answer. Register the IANA numbers.
config.client.formats = [
    { name: 'application/vnd.oma.lwm2m+tlv', value: 11542 },
    { name: 'application/vnd.oma.lwm2m+json', value: 11543 },
    { name: 'application/senml+json', value: 110 },
    { name: 'application/senml+cbor', value: 112 },
    { name: 'application/vnd.oma.lwm2m+cbor', value: 11544 }
];
const client = lwm2m.client;
client.init(config);

const initial = {
    '/3/0': {
        0: 'Open Mobile Alliance',
        1: 'Lightweight M2M Client',
        2: '345000123',
        3: '1.0',
        14: '+02:00',
        15: 'Europe/Berlin'
    },
    '/3303/0': {
        5700: '21.5',
        5701: 'Cel'
    }
};

function splitPath(path) {
    const i = path.lastIndexOf('/');
    return [path.substring(0, i), path.substring(i + 1)];
}

function setResource(path, value, cb) {
    const [obj, res] = splitPath(path);
    client.registry.setResource(obj, res, value, (err) => {
        if (err) {
            out('ERROR set ' + path + ': ' + err.message);
        } else {
            out('SET ' + path + ' ' + value);
        }
        if (cb) {
            cb(err);
        }
    });
}

function createObjects(cb) {
    const uris = Object.keys(initial);
    let pending = uris.length;
    for (const uri of uris) {
        client.registry.create(uri, (err) => {
            if (err) {
                return cb(err);
            }
            const res = initial[uri];
            const ids = Object.keys(res);
            let left = ids.length;
            for (const id of ids) {
                client.registry.setResource(uri, id, res[id], (e) => {
                    if (e) {
                        return cb(e);
                    }
                    if (--left === 0 && --pending === 0) {
                        cb(null);
                    }
                });
            }
        });
    }
}

// The value of a TLV payload holding one resource (type 11); null otherwise.
function tlvSingleValue(buf) {
    if (buf.length < 2 || (buf[0] >> 6) !== 3) {
        return null;
    }
    let i = 1 + ((buf[0] & 0x20) ? 2 : 1);
    let len;
    switch ((buf[0] >> 3) & 3) {
    case 0: len = buf[0] & 7; break;
    case 1: len = buf[i]; i += 1; break;
    case 2: len = buf.readUInt16BE(i); i += 2; break;
    default: len = buf.readUIntBE(i, 3); i += 3;
    }
    return i + len === buf.length ? buf.subarray(i) : null;
}

let device = null;
const tickers = {};

function installHandlers(serverInfo) {
    client.setHandler(serverInfo, 'read', (objectType, objectId, resourceId, value, callback) => {
        out(`READ /${objectType}/${objectId}/${resourceId} ${value}`);
        callback(null, value);
    });
    client.setHandler(serverInfo, 'write', (objectType, objectId, resourceId, value, callback) => {
        out(`WRITE /${objectType}/${objectId}/${resourceId} ${value}`);
        callback(null);
    });
    client.setHandler(serverInfo, 'execute', (objectType, objectId, resourceId, args, callback) => {
        out(`EXECUTE /${objectType}/${objectId}/${resourceId} args=${args}`);
        callback(null);
    });
    // Report each write request as it arrived on the wire (path, Content-Format,
    // payload bytes), then hand it to the library. The library stores a write's
    // payload as UTF-8 text whatever its Content-Format, while LwM2M 1.0 servers
    // (this gateway, like EMQX) write TLV: a one-resource TLV payload is unwrapped
    // to its value bytes here, which is what the application needs to do.
    const writeLib = serverInfo.handlers.write.lib;
    serverInfo.handlers.write.lib = (req, res, handler) => {
        const cf = req.headers['Content-Format'] || '-';
        out(`WRITE-RAW ${req.urlObj.pathname} cf=${cf} hex=${req.payload.toString('hex')}`);
        if (cf === 'application/vnd.oma.lwm2m+tlv') {
            const value = tlvSingleValue(req.payload);
            if (value === null) {
                out('ERROR write: not a one-resource TLV payload');
                res.code = '4.00';
                return res.end('');
            }
            req.payload = value;
        }
        writeLib(req, res, handler);
    };
}

function command(line) {
    const words = line.trim().split(/\s+/);
    switch (words[0]) {
    case 'set':
        setResource(words[1], words.slice(2).join(' '));
        break;
    case 'tick': {
        const path = words[1];
        clearInterval(tickers[path]);
        tickers[path] = setInterval(() => {
            const [obj, res] = splitPath(path);
            client.registry.get(obj, (err, o) => {
                if (!err) {
                    setResource(path, String(parseFloat(o.attributes[res]) + 0.5));
                }
            });
        }, parseInt(words[2], 10));
        break;
    }
    case 'unregister':
        Object.values(tickers).forEach(clearInterval);
        client.unregister(device, (err) => {
            out(err ? 'UNREGISTER-ERROR ' + (err.message || err) : 'UNREGISTERED');
        });
        break;
    case 'quit':
        process.exit(0);
        break;
    case '':
        break;
    default:
        out('ERROR unknown command ' + words[0]);
    }
}

createObjects((err) => {
    if (err) {
        out('ERROR objects: ' + err.message);
        process.exit(1);
    }
    client.register(host, port, null, endpoint, (e, info) => {
        if (e) {
            out('ERROR register: ' + (e.message || e.name || e));
            process.exit(1);
        }
        device = info;
        installHandlers(info.serverInfo);
        out('REGISTERED ' + info.location);
        readline.createInterface({ input: process.stdin }).on('line', command)
            .on('close', () => process.exit(0));
    });
});
