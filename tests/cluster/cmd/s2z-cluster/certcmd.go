package main

// `cert`: a CA and a serving certificate for a webhook that runs on the host and is registered
// by URL, so the demo and tests need no openssl or cert-manager.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func runCert() int {
	fs := flag.NewFlagSet("cert", flag.ContinueOnError)
	out := fs.String("out", "", "directory to write ca.crt, tls.crt, tls.key and ca-bundle.b64 into")
	hosts := fs.String("hosts", "127.0.0.1,localhost", "comma-separated IPs and DNS names the certificate is for")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *out == "" {
		fmt.Fprintln(os.Stderr, "cert: --out is required")
		return 2
	}
	if err := writeServingCert(*out, strings.Split(*hosts, ",")); err != nil {
		fmt.Fprintf(os.Stderr, "cert: failed to write certificates to %s: %v\n", *out, err)
		return 1
	}
	fmt.Printf("wrote %s\n", strings.Join([]string{
		filepath.Join(*out, "ca.crt"), filepath.Join(*out, "tls.crt"), filepath.Join(*out, "tls.key"),
		filepath.Join(*out, "ca-bundle.b64")}, " "))
	return 0
}

func writeServingCert(dir string, hosts []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: "s2z-webhook-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + 1), Subject: pkix.Name{CommonName: "s2z-webhook"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(strings.TrimSpace(h)); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h = strings.TrimSpace(h); h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "tls.crt"), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "tls.key"), "PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ca-bundle.b64"), []byte(base64.StdEncoding.EncodeToString(caPEM)), 0o644)
}
