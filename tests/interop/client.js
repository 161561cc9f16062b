// An independent client for tapio-server: @grpc/grpc-js for gRPC, protobufjs (through
// @grpc/proto-loader) for the messages. Prints one JSON line with what happened, exits 0.
//
//   node client.js ADDRESS batch     hello + one batch with one exec event; prints the ack
//   node client.js ADDRESS garbage   bytes that are no protobuf message; prints the status
//   node client.js ADDRESS health    grpc.health.v1.Health/Check; prints the status
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [address, mode] = process.argv.slice(2);
const protoDir = path.resolve(__dirname, '..', '..', 'proto');
const options = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true };
const deadline = () => new Date(Date.now() + 10000);

function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(0);
}

if (mode === 'health') {
  const def = loader.loadSync(path.join(__dirname, 'health.proto'), options);
  const Health = grpc.loadPackageDefinition(def).grpc.health.v1.Health;
  const client = new Health(address, grpc.credentials.createInsecure());
  client.Check({ service: 'tapio.v1.TapioService' }, { deadline: deadline() }, (err, res) =>
    done(err ? { error: err.code, details: err.details } : { status: res.status }));
} else if (mode === 'batch') {
  const def = loader.loadSync('tapio/v1/stream.proto', { ...options, includeDirs: [protoDir] });
  const TapioService = grpc.loadPackageDefinition(def).tapio.v1.TapioService;
  const client = new TapioService(address, grpc.credentials.createInsecure());
  const call = client.StreamEvents({ deadline: deadline() });
  const acks = [];
  call.on('data', (res) => {
    if (res.ack) {
      acks.push(res.ack);
      call.end();
    }
  });
  call.on('error', (err) => done({ acks, error: err.code, details: err.details }));
  call.on('end', () => done({ acks }));
  call.write({ hello: { collector_id: 'grpc-js-client', node_name: 'interop-node', version: 'grpc-js' } });
  call.write({
    batch: {
      batch_id: '42',
      collector_id: 'grpc-js-client',
      node_name: 'interop-node',
      created_at_ns: String(Date.now() * 1e6),
      events: [{
        id: 'ebpf-1', type: 'EVENT_TYPE_EXEC', timestamp_ns: String(Date.now() * 1e6),
        pid: 4242, ppid: 1, comm: 'interop',
        exec: { filename: '/usr/bin/interop', args: ['interop', '--flag'], args_count: 2 },
      }],
    },
  });
} else if (mode === 'garbage') {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const identity = (x) => x;
  const call = client.makeBidiStreamRequest('/tapio.v1.TapioService/StreamEvents', identity, identity,
    new grpc.Metadata(), { deadline: deadline() });
  call.on('data', () => {});
  call.on('error', (err) => done({ error: err.code, details: err.details }));
  call.on('end', () => done({ error: null }));
  // a length-delimited field whose length runs far past the end of the message
  call.write(Buffer.from([0x12, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02]));
} else {
  process.stderr.write('usage: node client.js ADDRESS batch|garbage|health\n');
  process.exit(2);
}
